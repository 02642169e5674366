"""The web page in a real browser: Debian's chromium driven by Playwright, against a real
uvicorn process serving the shipped models. Skipped (with the reason) when chromium or the
playwright package is missing; `.ci/run` installs chromium.

Screenshots go to IMGSIM_SCREENSHOTS when set (docs/img/ for the docs), else to a temp dir.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_server import free_port, start, wait_ready

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("IMGSIM_CHROMIUM", "/usr/bin/chromium"))
EXAMPLES = ROOT / "examples"
ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip

playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no chromium at {CHROMIUM} (apt-get)"),
]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory) -> Iterator[str]:
    port = free_port()
    data_dir = tmp_path_factory.mktemp("state")
    proc = start(["-m", "app", "--port", str(port)], ROOT / "model_store", port, data_dir)
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}", timeout_s=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, base_url):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    pg = context.new_page()
    outside: list[str] = []
    pg.on("request", lambda r: None if r.url.startswith((base_url, "data:", "blob:"))
          else outside.append(r.url))  # fmt: skip
    pg.goto(base_url + "/")
    pg.wait_for_function("document.getElementById('model-select').options.length > 0")
    yield pg
    context.close()
    assert outside == [], "the page fetched something from elsewhere"


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    wanted = os.environ.get("IMGSIM_SCREENSHOTS")
    path = Path(wanted) if wanted else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


def by(page, hook: str):
    return page.get_by_test_id(hook)


def compare(page, a: str, b: str) -> str:
    by(page, "image-a").set_input_files(str(EXAMPLES / a))
    by(page, "image-b").set_input_files(str(EXAMPLES / b))
    by(page, "submit").click()
    by(page, "verdict").wait_for(state="visible")
    page.wait_for_function("!document.getElementById('submit').disabled")
    return by(page, "verdict").inner_text()


def test_two_digits_get_a_verdict_and_the_threshold_re_judges_them(page, shots):
    assert by(page, "model-select").input_value() == "mnist"
    assert compare(page, "seven_a.png", "seven_b.png") == "same"
    distance = float(by(page, "distance").inner_text())
    assert 0 < distance < 1
    assert "(model)" in by(page, "threshold-used").inner_text()
    assert "%" in by(page, "similarity").inner_text()
    assert by(page, "error").is_hidden()
    page.screenshot(path=str(shots / "web-compare.png"), full_page=True)

    # slide the threshold below the pair's distance: the same pair is now judged different
    by(page, "threshold").fill(f"{distance / 2:.3f}")
    assert by(page, "verdict").inner_text() == "different"
    assert "(request)" in by(page, "threshold-used").inner_text()
    assert "FAR" in by(page, "rates").inner_text()
    by(page, "threshold").fill(f"{min(distance * 2, 1.5):.3f}")
    assert by(page, "verdict").inner_text() == "same"

    # a target false-accept rate, resolved from the validation table: FAR shown is the target
    by(page, "far").fill("0.01")
    assert "(far)" in by(page, "threshold-used").inner_text()
    assert "FAR 1.00%" in by(page, "control-rates").inner_text()
    assert by(page, "error").is_hidden()


def test_a_different_digit_is_different(page):
    assert compare(page, "seven_a.png", "two.png") == "different"


def test_far_below_the_table_and_api_errors_are_shown(page, tmp_path, shots):
    compare(page, "seven_a.png", "seven_b.png")
    by(page, "far").fill("0.0000001")
    assert "smallest supported far" in by(page, "error").inner_text()

    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    page.check("input[name=mode][value=model]")
    by(page, "image-b").set_input_files(str(notes))
    by(page, "submit").click()
    by(page, "error").wait_for(state="visible")
    page.wait_for_function("document.getElementById('error').textContent.includes('400')")
    text = by(page, "error").inner_text()
    assert "image_b" in text and "not a decodable image" in text
    page.screenshot(path=str(shots / "web-error.png"))


def _pairs_zip() -> bytes:
    digits = ROOT / "tests" / "fixtures" / "mnist_small"
    files = {d.name: sorted(d.glob("*.png"))[:4] for d in sorted(digits.iterdir())}
    rows = ["a,b,same"]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for label, paths in files.items():
            for p in paths:
                zf.write(p, f"{label}/{p.name}")
            rows.append(f"{label}/{paths[0].name},{label}/{paths[1].name},1")
            rows.append(f"{label}/{paths[2].name},{label}/{paths[3].name},1")
            other = str((int(label) + 1) % 10)
            rows.append(f"{label}/{paths[0].name},{other}/{files[other][1].name},0")
            rows.append(f"{label}/{paths[2].name},{other}/{files[other][3].name},0")
        zf.writestr("pairs.csv", "\n".join(rows) + "\n")
    return out.getvalue()


def test_calibration_panel_shows_the_roc_and_saves_a_profile(page, tmp_path, shots):
    archive = tmp_path / "pairs.zip"
    archive.write_bytes(_pairs_zip())
    page.get_by_role("button", name="Calibrate", exact=True).click()
    by(page, "pairs").set_input_files(str(archive))
    by(page, "profile-name").fill("browser-test")
    by(page, "calibrate-submit").click()
    by(page, "calibration").wait_for(state="visible")
    assert page.eval_on_selector("#roc", "img => img.naturalWidth") == 360
    assert "browser-test" in by(page, "profiles").inner_text()
    page.screenshot(path=str(shots / "web-calibrate.png"), full_page=True)

    page.get_by_role("button", name="Compare two images").click()
    page.select_option("#profile-select", "browser-test")
    compare(page, "seven_a.png", "seven_b.png")
    assert "(profile)" in by(page, "threshold-used").inner_text()


def test_model_page_shows_plots_metrics_and_config(page, shots):
    page.get_by_role("button", name="Model", exact=True).click()
    page.wait_for_function("document.querySelectorAll('#model-plots img').length >= 4")
    page.wait_for_function(
        "[...document.querySelectorAll('#model-plots img')].every(i => i.naturalWidth > 0)"
    )
    assert "roc_auc" in page.inner_text("#model-metrics")
    assert "epochs" in page.inner_text("#model-training")
    page.screenshot(path=str(shots / "web-model.png"), full_page=True)

    by(page, "model-select").select_option("cifar10")
    page.wait_for_function("document.getElementById('model-title').textContent.includes('cifar')")


def test_one_query_against_candidates_is_ranked(page, shots):
    page.get_by_role("button", name="One against many").click()
    by(page, "query").set_input_files(str(EXAMPLES / "seven_a.png"))
    by(page, "candidates").set_input_files(
        [str(EXAMPLES / "two.png"), str(EXAMPLES / "seven_b.png")]
    )
    by(page, "rank-submit").click()
    page.wait_for_function("document.querySelectorAll('#rank-results li').length == 2")
    first = page.inner_text("#rank-results li:first-child")
    assert first.startswith("seven_b.png: same")
    page.screenshot(path=str(shots / "web-rank.png"))


def enroll(page, gallery: str, subject: str, images: list[Path]) -> str:
    by(page, "gallery-name").fill(gallery)
    by(page, "subject-name").fill(subject)
    by(page, "enroll-images").set_input_files([str(p) for p in images])
    by(page, "enroll-submit").click()
    page.wait_for_function(
        "(s) => document.getElementById('enrolled').textContent.includes(`'${s}'`) && "
        "!document.getElementById('enroll-submit').disabled",
        arg=subject,
    )
    return by(page, "enrolled").inner_text()


def test_gallery_enroll_two_subjects_then_identify_and_verify_a_third_digit(page, shots):
    twos = [
        EXAMPLES / "two.png",
        *sorted((ROOT / "tests/fixtures/mnist_small/2").glob("*.png"))[:2],
    ]
    page.get_by_role("button", name="Galleries", exact=True).click()
    page.wait_for_function("document.getElementById('gallery-list').children.length > 0")
    assert by(page, "enroll-model").input_value() == "mnist"
    text = enroll(page, "digits", "seven", [EXAMPLES / "seven_a.png"])
    assert "Enrolled 1 image(s) of 'seven' in 'digits' (model mnist" in text
    text = enroll(page, "digits", "two", twos)
    assert "Enrolled 3 image(s)" in text and "now has 3" in text
    page.wait_for_function("document.getElementById('subject-list').children.length == 2")
    assert "digits: model mnist" in by(page, "gallery-list").inner_text()
    assert "2 subject(s), 4 image(s)" in by(page, "gallery-list").inner_text()
    assert by(page, "identify-gallery").input_value() == "digits"

    # a third seven, never enrolled: the nearest subject is 'seven', within the threshold
    by(page, "identify-image").set_input_files(str(EXAMPLES / "seven_b.png"))
    by(page, "identify-submit").click()
    by(page, "match").wait_for(state="visible")
    assert by(page, "match").inner_text() == "seven"
    ranked = page.locator("#identify-candidates li").all_inner_texts()
    assert [r.split(":")[0] for r in ranked] == ["seven", "two"]
    distances = [float(r.split("distance ")[1].split(",")[0]) for r in ranked]
    assert distances[0] < distances[1]
    assert "(model)" in page.inner_text("#identify-summary")
    assert by(page, "error").is_hidden()
    page.screenshot(path=str(shots / "web-galleries.png"), full_page=True)

    # open set: a threshold below the nearest distance leaves it unmatched, ranking unchanged
    by(page, "identify-threshold").fill(f"{distances[0] / 2:.4f}")
    by(page, "identify-submit").click()
    page.wait_for_function("document.getElementById('match').textContent == 'no match'")
    assert "(request)" in page.inner_text("#identify-summary")
    by(page, "identify-threshold").fill("")

    # verify the same image against each subject
    page.select_option("#verify-subject", "seven")
    by(page, "verify-submit").click()
    page.wait_for_function("document.getElementById('gallery-verdict').textContent != ''")
    assert by(page, "gallery-verdict").inner_text().startswith("same: 'seven'")
    page.select_option("#verify-subject", "two")
    by(page, "verify-submit").click()
    page.wait_for_function(
        "document.getElementById('gallery-verdict').textContent.startsWith('different')"
    )

    # delete a subject, then the gallery
    page.locator("#subject-list li", has_text="two:").get_by_role("button", name="delete").click()
    page.wait_for_function("document.getElementById('subject-list').children.length == 1")
    assert "1 subject(s), 1 image(s)" in by(page, "gallery-list").inner_text()
    page.locator("#gallery-list li", has_text="digits:").get_by_role(
        "button", name="delete"
    ).click()
    page.wait_for_function("document.getElementById('gallery-list').innerText.includes('none')")
    assert by(page, "error").is_hidden()


def test_gallery_errors_are_shown(page, tmp_path, shots):
    page.get_by_role("button", name="Galleries", exact=True).click()
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    by(page, "gallery-name").fill("broken")
    by(page, "subject-name").fill("someone")
    by(page, "enroll-images").set_input_files([str(EXAMPLES / "seven_a.png"), str(notes)])
    by(page, "enroll-submit").click()
    page.wait_for_function("document.getElementById('error').textContent.includes('400')")
    text = by(page, "error").inner_text()
    assert "images[1] (notes.png)" in text and "not a decodable image" in text
    page.screenshot(path=str(shots / "web-gallery-error.png"))
    # nothing of the failed call was stored: the gallery does not exist
    page.get_by_role("button", name="Galleries", exact=True).click()
    page.wait_for_function("document.getElementById('gallery-list').children.length > 0")
    assert "broken" not in by(page, "gallery-list").inner_text()

    # a gallery bound to mnist refuses cifar10 images' model, saying which model it uses
    enroll(page, "bound", "seven", [EXAMPLES / "seven_a.png"])
    page.select_option("#enroll-model", "cifar10")
    by(page, "enroll-images").set_input_files(str(EXAMPLES / "ship.jpg"))
    by(page, "enroll-submit").click()
    page.wait_for_function("document.getElementById('error').textContent.includes('409')")
    assert "uses model 'mnist'" in by(page, "error").inner_text()

    # threshold and far together: the API's 422 is shown as text
    by(page, "identify-image").set_input_files(str(EXAMPLES / "seven_b.png"))
    by(page, "identify-threshold").fill("0.5")
    by(page, "identify-far").fill("0.01")
    by(page, "identify-submit").click()
    page.wait_for_function("document.getElementById('error').textContent.includes('422')")
    assert "at most one of threshold, far" in by(page, "error").inner_text()
