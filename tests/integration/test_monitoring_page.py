"""The report folder's index page, parsed: every link and image resolves to a file of the folder, times are
written for people, the performance section, the alert and the retrain it caused are there, or it says why not."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from helpers.traffic import log_traffic

from visionloop.config import Settings

HUMAN_TIME = r"\d{4}-\d{2}-\d{2} \d{2}:\d{2} UTC"
ISO_TIME = r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}"


class Page(HTMLParser):
    """The addresses (href, src), the element ids and the visible text of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.addresses: list[str] = []
        self.ids: set[str] = set()
        self.text: list[str] = []
        self._skip = 0
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.addresses += [found[k] or "" for k in ("href", "src") if k in found]
        if found.get("id"):
            self.ids.add(str(found["id"]))
        self._skip += tag in ("style", "script")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("style", "script")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)

    @property
    def visible(self) -> str:
        return " ".join(" ".join(self.text).split())


def assert_links_resolve(page: Page, folder: Path) -> None:
    assert page.addresses
    for address in page.addresses:
        if address.startswith("#"):
            assert address[1:] in page.ids, address
        else:
            assert not re.match(r"^[a-z]+:|^/", address), address  # relative, within the folder
            assert (folder / address).is_file(), address


def test_index_links_performance_alert_and_retrain_with_human_times(
    trained_settings: Settings, champion, clean, fresh_log: Path
) -> None:
    from visionloop.data.corruptions import corrupt
    from visionloop.monitoring.index_page import note, render_index
    from visionloop.monitoring.monitor import run_monitor
    from visionloop.monitoring.outputs import is_relative, self_contained_html
    from visionloop.monitoring.reports import alert_facts, record_retrain

    images, labels = clean
    log_traffic(trained_settings, champion.model, corrupt(images[:40], "blur", 2), labels[:40])  # labeled
    first = run_monitor(trained_settings, window=40)
    assert first.status == "drift" and first.performance.status == "checked"
    folder = first.out_dir
    page = Page(first.files["index"].read_text())
    assert_links_resolve(page, folder)
    assert {"performance/confusion_matrix.png", "performance/roc_curves.png", "images.png"} <= set(page.addresses)
    assert {"report.html", "verdict.json", "#performance", "#alert"} <= set(page.addresses)
    text = page.visible
    assert re.search(rf"Checked {HUMAN_TIME}, the first check of {trained_settings.model_name}", text)
    assert re.search(rf"40 predictions made {HUMAN_TIME[:-4]} – \d{{2}}:\d{{2}} UTC \(\d+ s\)", text)
    assert not re.search(ISO_TIME, text), "machine times on the page"
    assert "40 labeled predictions" in text and "accuracy" in text
    assert "no alert raised by this run" in text  # run_monitor reports; the flow raises alerts
    assert first.alert["report_dir"] == str(folder)  # what the retrain finds the page by

    # The MLflow copy: the same page with nothing relative, the plots inlined.
    logged = self_contained_html(first.files["index"], "drift")
    assert not [a for a in re.findall(r"\b(?:src|href)=[\"']([^\"']*)[\"']", logged) if is_relative(a)]
    assert logged.count('src="data:image/png;base64,') == 3

    # The alert raised on it, then the retrain it caused ending: both on the page, still resolving.
    note(folder, alert=alert_facts(first.alert, "alert-1", "retrain_started", "drift detected"))
    waiting = Page(render_index(folder).read_text()).visible
    assert re.search(rf"Alert alert-1 \(\w+, cause: drift[^)]*\) raised {HUMAN_TIME}: a retrain was started", waiting)
    assert "The retrain has not ended yet" in waiting
    record_retrain(folder, "promoted v2: +0.08 macro-F1 on the gate set")
    done = Page((folder / "index.html").read_text())
    assert_links_resolve(done, folder)
    assert re.search(rf"The retrain ended {HUMAN_TIME} after \d+ s: promoted v2", done.visible)
    assert json.loads((folder / "check.json").read_text())["retrain"]["outcome"].startswith("promoted v2")

    # A second check of new traffic: how long after the previous one; no labels in its window's version yet.
    log_traffic(trained_settings, champion.model, corrupt(images[40:80], "blur", 2))
    second = run_monitor(trained_settings, window=40, performance=False)
    text = Page(second.files["index"].read_text()).visible
    assert re.search(rf"Checked {HUMAN_TIME}, \d+ s after the previous check", text)
    assert "No performance check ran with this drift check." in text


def test_human_durations() -> None:
    from visionloop.monitoring.index_page import human_duration, human_time

    assert [human_duration(s) for s in (4, 89, 180, 7260, 3 * 86400)] == ["4 s", "89 s", "3 min", "2 h 1 min",
                                                                          "3 days"]
    assert human_time("2026-12-02T14:05:59.9+00:00") == "2026-12-02 14:05 UTC"
    assert human_time("2026-12-02T15:05:00+01:00") == "2026-12-02 14:05 UTC"
