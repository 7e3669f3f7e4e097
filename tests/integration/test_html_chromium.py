"""The HTML view in a real browser: headless Chromium loads the page, its DOM has one highlighted
span per feature with the right data and colours, and a screenshot is written.

Chromium is Debian's ``chromium`` package, installed by ``make test`` (scripts/install_test_tools.sh).
Without it the test fails under CI (``CI=true``) and skips elsewhere. The screenshot is kept in
``test-artifacts/html_view.png`` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from attribsdk import Explainer, Explanation
from attribsdk.adapters.wrappers import TestModel
from attribsdk.cost import Price, Pricing
from tests.tiny_models import tiny_local_model

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
CONTEXT = [
    "The capital of France is Paris. Paris is a large city on the Seine, <b>not</b> a village.",
    "Berlin is the capital of Germany. The cat sat on the mat in the sun.",
]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
#: Appended to the test's own copy of the page (the product page has no script): writes the
#: colours the browser computed into the DOM, so --dump-dom shows what was rendered.
PROBE = (
    "<script>for (const el of document.querySelectorAll('span.feat')) {"
    "const cs = getComputedStyle(el); el.setAttribute('data-bg', cs.backgroundColor);"
    "el.setAttribute('data-rendered', String(el.getClientRects().length > 0)); }</script>"
)


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        message = (
            "chromium is not installed: run `make test` as root (scripts/install_test_tools.sh) or apt-get it"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def explanation() -> Explanation:
    pricing = Pricing(overrides={"test:model": Price(input_mtok=0.15, output_mtok=0.6)})
    closed = TestModel("Paris is the capital of France.", name="test:model")
    with Explainer(closed=closed, surrogate=tiny_local_model(seed=3), cache=False, pricing=pricing) as ex:
        return ex.explain_sync(
            "What is the capital of France?", CONTEXT, features="words", system="Answer briefly."
        )


class _Feats(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.spans: list[dict[str, Any]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "span" and "feat" in (a.get("class") or "").split():
            self.spans.append(a)


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_chromium(), *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _rgba(css: str) -> tuple[int, int, int, float]:
    m = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, ([0-9.]+))?\)", css)
    assert m, css
    return int(m[1]), int(m[2]), int(m[3]), float(m[4]) if m[4] is not None else 1.0


def test_chromium_renders_every_feature_highlighted(explanation: Explanation, tmp_path: Path) -> None:
    e = explanation
    page = tmp_path / "view.html"
    e.save_html(page)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")

    done = _run(["--dump-dom", probe.as_uri()], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    parser = _Feats()
    parser.feed(done.stdout)
    spans = parser.spans
    m = len(e.features)
    assert m >= 15
    assert [int(s["data-index"]) for s in spans] == list(range(m))  # one span per feature
    ranks = {r.feature.index: r.rank for r in e.ranked()}
    for s in spans:
        i = int(s["data-index"])
        assert int(s["data-rank"]) == ranks[i]
        assert float(s["data-coef"]) == pytest.approx(e.coefficients[i], rel=1e-5, abs=1e-12)
        assert s["data-rendered"] == "true"  # laid out, i.e. visible on the page
        r, g, b, alpha = _rgba(s["data-bg"])
        coef = e.coefficients[i]
        if coef > 0:
            assert (r, g, b) == (37, 99, 235)
        elif coef < 0:
            assert (r, g, b) == (220, 38, 38)
        s["alpha"] = alpha if coef else 0.0
    assert any(e.coefficients[int(s["data-index"])] < 0 for s in spans)  # both colours are exercised
    # the browser's opacities are in attribution order: a larger attribution is never fainter
    shown = [(e.attributions[int(s["data-index"])], float(s["alpha"])) for s in spans]
    assert len({alpha for _, alpha in shown}) > 2
    for attr_a, alpha_a in shown:
        assert all(alpha_a <= alpha_b for attr_b, alpha_b in shown if attr_a < attr_b)
    # the user's markup stays text
    assert "&lt;b&gt;not&lt;/b&gt;" in done.stdout and "<b>not</b>" not in done.stdout

    shot = tmp_path / "view.png"
    done = _run(
        ["--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()], tmp_path
    )
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    assert img.shape[:2] == (1600, 1200)
    top = img[:600, :, :3]
    blue = (top[..., 2] > top[..., 0] + 0.15).mean()  # the highlighted input is on screen
    assert blue > 0.002 and float(top.std()) > 0.05
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "html_view.png")
    shutil.copy(page, ARTIFACTS / "html_view.html")
