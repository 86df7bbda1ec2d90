"""bench/load.py's own arithmetic: probe lines cut off mid-write, and which model version may have
answered a request while models were swapped. (The load itself is `make reliability`.)"""

from __future__ import annotations

from bench.load import parse_probes
from bench.model_swaps import Timeline


def test_a_probe_line_cut_off_when_the_prober_stops_is_counted_not_parsed():
    output = "/healthz 0.5 0.002 200\n/readyz 0.51 0.003 200\n/healthz 1.0 0.0"
    probes, partial = parse_probes(output)
    assert probes == [("/healthz", 0.5, 0.002, 200), ("/readyz", 0.51, 0.003, 200)]
    assert partial == 1


def test_whole_probe_lines_parse_and_garbled_ones_are_counted():
    assert parse_probes("") == ([], 0)
    assert parse_probes("/healthz 0.5 0.002 200\n") == ([("/healthz", 0.5, 0.002, 200)], 0)
    probes, partial = parse_probes("/healthz 0.5 0.002 200\n/healthz 1.0 x 200\n\n")
    assert probes == [("/healthz", 0.5, 0.002, 200)] and partial == 2


def test_a_version_answers_only_between_its_deploy_and_its_successor_being_seen():
    timeline = Timeline(["v1", "v2"], {"v1": float("-inf"), "v2": 10.0}, {"v1": 12.0})
    # v1: anything sent before v2 was seen serving at 12, however late it finished.
    assert timeline.explains("v1", sent=11.9, done=30.0)
    assert not timeline.explains("v1", sent=12.1, done=13.0)
    # v2: only answers finished after its files were in place at 10.
    assert timeline.explains("v2", sent=9.0, done=10.5)
    assert not timeline.explains("v2", sent=8.0, done=9.5)
    assert not timeline.explains("v3", sent=0.0, done=1.0)
    assert not timeline.explains(None, sent=0.0, done=1.0)
