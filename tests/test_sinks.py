"""The sink protocol behind Tracker(loggers=...): rows as they are written, the complete run at close."""
import pytest
import torch
from torch import nn

import infoplane
from infoplane.integrations.sinks import as_sinks, require, scalar_tags


class Recorder:
    def __init__(self):
        self.batches, self.closed = [], []

    def log_rows(self, rows, run):
        self.batches.append(list(rows))

    def close(self, run):
        self.closed.append(run)


def net_and_data():
    torch.manual_seed(0)
    x = torch.randint(0, 2, (64, 12), generator=torch.Generator().manual_seed(0)).float()
    return nn.Sequential(nn.Linear(12, 4), nn.Tanh(), nn.Linear(4, 2)), x, (x[:, 0] > 0).long()


def test_custom_sink_gets_every_row_once_and_the_complete_run(tmp_path):
    net, x, y = net_and_data()
    sink = Recorder()
    with infoplane.Tracker(net, x, y, schedule=[0, 1, 2], out=tmp_path / "run", buffer_bytes=0,
                           loggers=[sink]) as t:
        for epoch in range(3):
            t.step(epoch)
    assert len(sink.batches) == 3  # buffer_bytes=0: one write per recorded epoch
    assert [r for batch in sink.batches for r in batch] == infoplane.load_run(tmp_path / "run").rows
    assert len(sink.closed) == 1 and sink.closed[0].meta["complete"]


def test_sink_closed_when_the_loop_raises(tmp_path):
    net, x, y = net_and_data()
    sink = Recorder()
    with pytest.raises(RuntimeError, match="stop"):
        with infoplane.Tracker(net, x, y, schedule=[0, 1], loggers=sink) as t:
            t.step(0)
            raise RuntimeError("stop")
    assert [r.epoch for r in sink.batches[0]] == [0, 0] and len(sink.closed) == 1


def test_bad_logger_is_refused_before_a_run_directory_exists(tmp_path):
    net, x, y = net_and_data()
    with pytest.raises(TypeError, match="log_rows"):
        infoplane.Tracker(net, x, y, out=tmp_path / "run", loggers=object())
    assert not (tmp_path / "run").exists()
    assert as_sinks(None) == []


def test_scalar_tags_name_estimator_field_layer_and_seed():
    row = infoplane.runs.writer.Row(3, None, 7, "enc.1", "kde", 2.5, 0.5, 2.0, float("nan"))
    assert scalar_tags(row) == [("infoplane/kde/ixt/enc.1", 2.5), ("infoplane/kde/ity/enc.1", 0.5),
                                ("infoplane/kde/ixt_lower/enc.1", 2.0)]
    assert scalar_tags(row, n_seeds=2)[0] == ("infoplane/kde/ixt/enc.1/seed3", 2.5)
    # A side variable's row: only its I(T;Z), under a tag of its own.
    assert scalar_tags(row._replace(target="parity")) == [("infoplane/kde/ity[parity]/enc.1", 0.5)]


def test_missing_framework_names_the_extra():
    with pytest.raises(ImportError, match=r"pip install 'infoplane\[nosuch\]'"):
        require("nosuch_framework_xyz", "nosuch", "this feature")
