"""The /docs page: every endpoint, and a try-it form per model prefilled with the example
from the OpenAPI document. Self-contained (inline style and script, relative URLs only),
so it works on a machine with no way out."""

from __future__ import annotations

import html
import re
from typing import Any

import orjson

# Served at /favicon.ico: browsers ask for it on every visit, and a 404 there is log noise.
FAVICON_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16">'
    b'<rect width="16" height="16" rx="3" fill="#2b5797"/>'
    b'<path d="M4 11V5l4 4 4-4v6" fill="none" stroke="#fff" stroke-width="1.6"/></svg>'
)

_STYLE = """
body{font-family:system-ui,sans-serif;max-width:64em;margin:2em auto;padding:0 1em;color:#222}
td,th{padding:.2em .8em;text-align:left;vertical-align:top}code{font-size:.95em}
pre,textarea{background:#f4f4f4;padding:.8em;overflow:auto;width:100%;box-sizing:border-box}
fieldset{border:1px solid #ccc;margin:1em 0;padding:1em}label{display:block;margin:.3em 0}
label span{display:inline-block;min-width:14em}small{color:#666}button{margin:.5em 0}
.bar{display:flex;align-items:center;height:1.4em}.bar span{width:14em}.bar i{display:block;height:1em}
.bar b{font-weight:normal;margin-left:.5em;font-size:.9em}
"""
# Reads each form's fields into one record, or the textarea's JSON for V2, posts it to the
# form's path (relative: under a proxy's prefix the page and its forms move together), and
# shows the status, a table of the predictions and the raw body. An empty field is null only
# where the model takes null; numbers are never truncated (700.5 is not 700).
_SCRIPT = r"""
function esc(s){return String(s).replace(/[&<>"']/g,c=>'&#'+c.charCodeAt(0)+';');}
function refuse(form,el,msg){form.querySelector('pre.out').textContent=msg;el.focus();return null;}
function record(form){const r={};
  for(const el of form.querySelectorAll('[data-feature]')){
    const v=el.value.trim(),name=el.dataset.feature,t=el.dataset.type;
    if(v===''){if(el.dataset.nullable==='1'){r[name]=null;continue;}
      return refuse(form,el,name+' is required: this model cannot fill it in');}
    if(t==='number'||t==='integer'){const n=Number(v);
      if(!Number.isFinite(n))return refuse(form,el,name+': '+v+' is not a number');
      if(t==='integer'&&!Number.isInteger(n))return refuse(form,el,name+': '+v+' is not a whole number');
      r[name]=n;}
    else if(t==='boolean'){r[name]=v==='true';}
    else{r[name]=v;}}
  return JSON.stringify(r);}
function shown(v){return typeof v==='number'?String(Number(v.toPrecision(6))):JSON.stringify(v);}
function answer(b){const p=b&&b.predictions;if(!Array.isArray(p)||!p.length)return '';
  const first=p[0],probs=first.probabilities?Object.keys(first.probabilities):[];
  let h='<table class="answer"><tr><th>row</th>';
  if('label' in first)h+='<th>predicted class</th>';
  for(const k of probs)h+='<th>probability of '+esc(k)+'</th>';
  if('value' in first)h+='<th>predicted value</th>';
  h+='</tr>';
  p.forEach((x,i)=>{h+='<tr><td>'+i+'</td>';
    if('label' in first)h+='<td><b>'+esc(x.label)+'</b></td>';
    for(const k of probs)h+='<td>'+esc(Number(x.probabilities[k]).toFixed(4))+'</td>';
    if('value' in first)h+='<td>'+esc(shown(x.value))+'</td>';
    h+='</tr>';});
  return h+'</table>';}
async function send(form){
  const out=form.querySelector('pre.out'),table=form.querySelector('div.answer');table.innerHTML='';
  const body=form.dataset.kind==='v2'?form.querySelector('textarea').value:record(form);
  if(body===null)return false;
  const res=await fetch(form.dataset.path,{method:'POST',headers:{'content-type':'application/json'},body});
  const text=await res.text();out.textContent=res.status+' '+text;
  if(res.ok){try{table.innerHTML=answer(JSON.parse(text));}catch(e){}}
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
        step = {"number": ' step="any"', "integer": ' step="1"'}.get(kind, "")
        input_type = "number" if kind in ("number", "integer") else "text"
        required = "" if nullable else " required"
        control = f'<input type="{input_type}"{step} {attrs} value="{shown}"{required}>'
        known = prop.get("examples")
        if isinstance(known, list) and known:  # categories offered, others may be typed
            listed = f"known-{html.escape(name)}"
            options = "".join(f"<option>{html.escape(str(v))}</option>" for v in known)
            control = control[:-1] + f' list="{listed}"><datalist id="{listed}">{options}</datalist>'
    note = _in_words(prop.get("description", ""))
    if nullable:
        note = f"{note}; may be left empty (sent as null)" if note else "may be left empty (sent as null)"
    return f"<label><span>{html.escape(name)}</span>{control} <small>{html.escape(note)}</small></label>"


# openapi.py's feature note: "float64, seen in training from 0 to 72 (outside: reject)".
_RANGE = re.compile(
    r"^(?P<dtype>\S+), seen in training from (?P<lo>\S+) to (?P<hi>\S+) \(outside: (?P<policy>\w+)\)$"
)
_POLICY = {
    "reject": "a value outside is refused (422)",
    "clip": "a value outside is moved to the nearer end",
    "allow": "a value outside is used as given",
}


def _in_words(note: str) -> str:
    """The range a feature had in the sample rows given at conversion, and what the server
    does with a value outside it, said for a person."""
    found = _RANGE.match(note)
    if found is None:
        return note
    policy = _POLICY.get(found["policy"], f"outside it: {found['policy']}")
    return (
        f"{found['dtype']}; from {found['lo']} to {found['hi']} in the sample given at conversion; {policy}"
    )


def _classes(op: dict[str, Any]) -> str:
    """The classes a classifier answers with, from its response schema: a person reads the
    table of probabilities against them."""
    try:
        answer = op["responses"]["200"]["content"]["application/json"]["schema"]
        classes = answer["properties"]["predictions"]["items"]["properties"]["label"]["enum"]
    except (KeyError, TypeError):
        return ""
    shown = ", ".join(html.escape(str(c)) for c in classes)
    return f"<p><small>predicts one of the classes {shown}, with each one's probability</small></p>"


def _record_form(path: str, op: dict[str, Any], schemas: dict[str, Any], chart: bool = False) -> str:
    content = op["requestBody"]["content"]["application/json"]
    record = schemas[content["schema"]["oneOf"][0]["$ref"].rsplit("/", 1)[-1]]
    example = content.get("example", {})
    fields = "".join(_field(n, p, example.get(n)) for n, p in record["properties"].items())
    return (
        f'<form data-kind="{"explain" if chart else "records"}" data-path="{html.escape(_relative(path))}" '
        'onsubmit="return send(this) && false" novalidate>'
        f"<fieldset><legend>POST <code>{html.escape(path)}</code></legend>{_classes(op)}{fields}"
        '<button type="submit">Send</button>'
        # explain: the first row's contributions drawn as bars, red up and blue down
        + ('<div class="chart"></div>' if chart else "")
        + f"{_ANSWER}</fieldset></form>"
    )


_ANSWER = '<div class="answer"></div><pre class="out"></pre>'  # the table, then the raw answer


def _relative(path: str) -> str:
    """/v1/... as v1/...: resolved against /docs, it keeps a proxy's prefix (/ml/docs)."""
    return path.lstrip("/")


def _v2_form(path: str, op: dict[str, Any]) -> str:
    example = op["requestBody"]["content"]["application/json"].get("example", {})
    text = html.escape(orjson.dumps(example, option=orjson.OPT_INDENT_2).decode())
    return (
        f'<form data-kind="v2" data-path="{html.escape(_relative(path))}" '
        'onsubmit="return send(this) && false">'
        f"<fieldset><legend>POST <code>{html.escape(path)}</code> (Open Inference Protocol)</legend>"
        f'<textarea rows="8">{text}</textarea><button type="submit">Send</button>{_ANSWER}</fieldset></form>'
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
        "<p>Machine-readable: <a href='openapi.json'>openapi.json</a> (OpenAPI 3.1). "
        "Each form below is filled with a typical row of the sample given when the model was "
        "converted; the range shown beside a number is that sample's.</p>"
        f"<h2>Try it</h2>{_model_sections(spec)}"
        f"<h2>Endpoints</h2><table><tr><th>method</th><th>path</th><th>what</th></tr>{rows}</table>"
        "</body></html>"
    )
