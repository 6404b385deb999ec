"""The HTTP side of the admission budget (`gateway/http/admission.py` over
`gateway/admission.py`), driven as ASGI with no sockets: every inference path the hot-path
router serves is charged, everything else passes; an inflated body refused is counted once."""

from __future__ import annotations

import pytest

from gateway.admission import Admission
from gateway.http.admission import AdmissionGate

INFERENCE = [
    "/v1/models/m/predict", "/v1/models/m/versions/2/predict", "/v1/models/m:predict",
    "/v1/models/m/explain", "/v1/models/m/versions/2/explain", "/v1/models/m:explain",
    "/v2/models/m/infer", "/v2/models/m/versions/2/infer",
]  # fmt: skip


def _scope(path: str) -> dict[str, object]:
    return {"type": "http", "method": "POST", "path": path, "headers": [(b"content-length", b"10")]}


async def _receive() -> dict[str, object]:
    return {"type": "http.request", "body": b"", "more_body": False}


@pytest.mark.asyncio
@pytest.mark.parametrize("path", INFERENCE)
async def test_every_inference_path_is_charged_and_shed_beyond_the_bound(path):
    admission = Admission(max_requests=1, max_bytes=1 << 20, max_body_bytes=1 << 20)
    seen: list[int] = []

    async def app(scope, receive, send):
        seen.append(admission.requests)

    sent: list[dict[str, object]] = []

    async def send(message):
        sent.append(message)

    gate = AdmissionGate(app, admission)
    await gate(_scope(path), _receive, send)
    assert seen == [1] and admission.requests == 0  # counted while it ran, released after
    admission.requests = 1  # the bound is reached: the next one is shed before its body
    await gate(_scope(path), _receive, send)
    assert seen == [1] and sent[0]["status"] == 503 and admission.shed == 1


@pytest.mark.asyncio
async def test_other_paths_pass_uncharged():
    admission = Admission(max_requests=0, max_bytes=0, max_body_bytes=0)
    ran: list[str] = []

    async def app(scope, receive, send):
        ran.append(scope["path"])

    gate = AdmissionGate(app, admission)
    for path in ("/healthz", "/v2/models/m", "/v1/models/m/predictions", "/admin/models/m/promote"):
        await gate(_scope(path), _receive, lambda message: None)
    assert len(ran) == 4 and admission.shed == 0


def test_an_inflated_body_refused_is_not_counted_as_shed_by_the_budget():
    """The endpoint answers it 503 (Overloaded) and its outcome counts it: once."""
    admission = Admission(max_requests=4, max_bytes=100, max_body_bytes=100)
    first, second = [admission.admit(60)], [admission.admit(30)]
    assert first == [60] and second == [30]
    assert not admission.grow(second, 50) and admission.bytes == 90 and admission.shed == 0
