"""The /docs page: every endpoint, and a try-it form per model prefilled with the example
from the OpenAPI document. Self-contained (inline style and script, relative URLs only),
so it works on a machine with no way out."""

from __future__ import annotations

import html
from typing import Any

import orjson

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em;color:#222}
td,th{padding:.2em .8em;text-align:left;vertical-align:top}code{font-size:.95em}
pre,textarea{background:#f4f4f4;padding:.8em;overflow:auto;width:100%;box-sizing:border-box}
fieldset{border:1px solid #ccc;margin:1em 0;padding:1em}label{display:block;margin:.3em 0}
label span{display:inline-block;min-width:14em}small{color:#666}button{margin:.5em 0}
.bar{display:flex;align-items:center;height:1.4em}.bar span{width:14em}.bar i{display:block;height:1em}
.bar b{font-weight:normal;margin-left:.5em;font-size:.9em}
"""
# Reads each form's fields into one record (numbers as numbers, an empty nullable field as
# null), or the textarea's JSON for V2, posts it, shows status and body.
_SCRIPT = """
async function send(form){
  const out=form.querySelector('pre.out');let body;
  if(form.dataset.kind==='v2'){body=form.querySelector('textarea').value;}
  else{const r={};for(const el of form.querySelectorAll('[data-feature]')){
    const v=el.value;const name=el.dataset.feature;
    if(v===''&&el.dataset.nullable==='1'){r[name]=null;}
    else if(el.dataset.type==='number'){r[name]=Number(v);}
    else if(el.dataset.type==='integer'){r[name]=parseInt(v,10);}
    else if(el.dataset.type==='boolean'){r[name]=v==='true';}
    else{r[name]=v;}}
    body=JSON.stringify(r);}
  const res=await fetch(form.dataset.path,{method:'POST',headers:{'content-type':'application/json'},body});
  const text=await res.text();out.textContent=res.status+' '+text;
  const chart=form.querySelector('div.chart');if(chart&&res.ok){bars(chart,JSON.parse(text));}
  return false;}
function bars(chart,answer){
  const e=answer.explanations[0];const items=Object.entries(e.contributions);
  const top=Math.max(...items.map(([,v])=>Math.abs(v)),1e-12);
  chart.replaceChildren();
  const head=document.createElement('p');
  head.textContent=`${e.output}${'class' in e?' of '+e['class']:''}: base ${e.base_value.toFixed(4)}`;
  chart.appendChild(head);
  for(const [name,v] of items){
    const row=document.createElement('div');row.className='bar';
    const label=document.createElement('span');label.textContent=name;
    const bar=document.createElement('i');bar.style.width=(45*Math.abs(v)/top)+'%';
    bar.style.marginLeft=v<0?(45-45*Math.abs(v)/top)+'%':'45%';
    bar.style.background=v<0?'#2b6cb0':'#c53030';
    const value=document.createElement('b');value.textContent=v.toFixed(4);
    row.append(label,bar,value);chart.appendChild(row);}}
"""


def _type(prop: dict[str, Any]) -> tuple[str, bool]:
    """The JSON type of a record field and whether null is allowed."""
    options = prop.get("anyOf", [prop])
    types = [o.get("type") for o in options]
    kind = next((t for t in types if t not in (None, "null")), "string")
    return str(kind), "null" in types


def _field(name: str, prop: dict[str, Any], value: Any) -> str:
    kind, nullable = _type(prop)
    enum = next((o["enum"] for o in prop.get("anyOf", [prop]) if "enum" in o), None)
    attrs = f'data-feature="{html.escape(name)}" data-type="{kind}" data-nullable="{int(nullable)}"'
    if enum is not None:
        options = "".join(
            f"<option{' selected' if v == value else ''}>{html.escape(str(v))}</option>" for v in enum
        )
        if nullable:  # an empty choice sends null
            options = f'<option value=""{" selected" if value is None else ""}></option>' + options
        control = f"<select {attrs}>{options}</select>"
    else:
        shown = (
            ""
            if value is None
            else html.escape(str(value).lower() if isinstance(value, bool) else str(value))
        )
        step = ' step="any"' if kind == "number" else ""
        input_type = "number" if kind in ("number", "integer") else "text"
        control = f'<input type="{input_type}"{step} {attrs} value="{shown}">'
    note = prop.get("description", "")
    return f"<label><span>{html.escape(name)}</span>{control} <small>{html.escape(note)}</small></label>"


def _record_form(path: str, op: dict[str, Any], schemas: dict[str, Any], chart: bool = False) -> str:
    content = op["requestBody"]["content"]["application/json"]
    record = schemas[content["schema"]["oneOf"][0]["$ref"].rsplit("/", 1)[-1]]
    example = content.get("example", {})
    fields = "".join(_field(n, p, example.get(n)) for n, p in record["properties"].items())
    return (
        f'<form data-kind="{"explain" if chart else "records"}" data-path="{html.escape(path)}" '
        'onsubmit="return send(this) && false">'
        f"<fieldset><legend>POST <code>{html.escape(path)}</code></legend>{fields}"
        '<button type="submit">Send</button>'
        # explain: the first row's contributions drawn as bars, red up and blue down
        + ('<div class="chart"></div>' if chart else "")
        + '<pre class="out"></pre></fieldset></form>'
    )


def _v2_form(path: str, op: dict[str, Any]) -> str:
    example = op["requestBody"]["content"]["application/json"].get("example", {})
    text = html.escape(orjson.dumps(example, option=orjson.OPT_INDENT_2).decode())
    return (
        f'<form data-kind="v2" data-path="{html.escape(path)}" onsubmit="return send(this) && false">'
        f"<fieldset><legend>POST <code>{html.escape(path)}</code> (Open Inference Protocol)</legend>"
        f'<textarea rows="8">{text}</textarea><button type="submit">Send</button>'
        '<pre class="out"></pre></fieldset></form>'
    )


def _model_sections(spec: dict[str, Any]) -> str:
    schemas = spec["components"]["schemas"]
    sections: dict[str, list[str]] = {}
    for path, ops in spec["paths"].items():
        op = ops.get("post")
        if op is None or "{version}" in path or not op.get("tags"):
            continue
        model = op["tags"][0]
        if path.endswith("/predict"):
            sections.setdefault(model, []).insert(0, _record_form(path, op, schemas))
        elif path.endswith("/explain"):
            sections.setdefault(model, []).append(_record_form(path, op, schemas, chart=True))
        elif path.endswith("/infer"):
            sections.setdefault(model, []).append(_v2_form(path, op))
    return "".join(
        f"<h3>{html.escape(model)}</h3>{''.join(forms)}" for model, forms in sorted(sections.items())
    )


def docs_page(spec: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr><td><code>{method.upper()}</code></td><td><code>{html.escape(path)}</code></td>"
        f"<td>{html.escape(op.get('summary', ''))}</td></tr>"
        for path, ops in spec["paths"].items()
        for method, op in ops.items()
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>onnx-gateway API</title>"
        f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>"
        f"<h1>onnx-gateway {html.escape(spec['info']['version'])}</h1>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1). "
        "Each form below is filled with a typical row from the model's training sample.</p>"
        f"<h2>Try it</h2>{_model_sections(spec)}"
        f"<h2>Endpoints</h2><table><tr><th>method</th><th>path</th><th>what</th></tr>{rows}</table>"
        "</body></html>"
    )
