"""fpm_fleet.output: messages for the operator."""

from __future__ import annotations

import io
import os

from rich.console import Console

from fpm_fleet import output
from fpm_fleet.core.events import Event
from fpm_fleet.live import LiveObserver


def test_a_long_note_stays_one_line_in_a_pipe(capsys):
    path = "/srv/" + "very-long-directory/" * 12 + "fpm-fleet-20250101-120000-4242.log"
    output.note(f"log: {path}", "dim")
    assert capsys.readouterr().err == f"log: {path}\n"


def render(renderable) -> str:
    console = Console(width=200, record=True, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


REMOTE = "/srv/[red]app[/red] failed: [/x] [bold]no[/]"


def test_remote_text_in_a_table_is_shown_as_is_never_read_as_markup():
    text = render(output.table("t", ["path", "error"], [[REMOTE, "[link=x]y[/link]"]]))
    assert REMOTE in text and "[link=x]y[/link]" in text


def test_remote_text_in_the_live_display_is_shown_as_is():
    live = LiveObserver(Console(file=io.StringIO()))
    live.event(Event("fail", "web1", "stop [/x]", "www-1", REMOTE, 1.0))
    assert REMOTE[:60] in render(live.render()).replace("\n", "")


def test_the_log_file_is_created_readable_by_the_operator_only(tmp_path):
    old = os.umask(0o022)
    try:
        path = output.start_log(str(tmp_path / "logs"), "fab deploy")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o600
