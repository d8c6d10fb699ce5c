"""tasks.output: messages for the operator."""

from __future__ import annotations

from tasks import output


def test_a_long_note_stays_one_line_in_a_pipe(capsys):
    path = "/srv/" + "very-long-directory/" * 12 + "fpm-fleet-20250101-120000-4242.log"
    output.note(f"log: {path}", "dim")
    assert capsys.readouterr().err == f"log: {path}\n"
