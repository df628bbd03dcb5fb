"""The slow integration tests: real PyTorch Lightning, TensorBoard, Weights & Biases (offline) and Hugging Face
``transformers`` (a tiny model built from a config; nothing is downloaded). No framework is mocked.
"""
import glob
import math
import os
import struct

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import infoplane
from infoplane.estimators import Binning, binned_mi

BIN = Binning(bins=30, range=(-1, 1))


def data(n=128, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (n, 12), generator=g).float()
    return x, (x[:, :6].sum(1) > x[:, 6:].sum(1)).long()


def as_tuples(rows):
    return [tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in r) for r in rows]


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def event_scalars(logdir):
    """Every scalar and image tag of a TensorBoard log directory, read with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    scalars, images = {}, {}
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"), recursive=True)):
        acc = EventAccumulator(path, size_guidance={"scalars": 0, "images": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({e.step: e.value for e in acc.Scalars(tag)})
        for tag in acc.Tags()["images"]:
            images.setdefault(tag, []).extend(acc.Images(tag))
    return scalars, images


# ------------------------------------------------------------------------------------------------- Lightning
pl = pytest.importorskip("pytorch_lightning")


class LitNet(pl.LightningModule):
    def __init__(self, fail_at_epoch=None):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 2))
        self.fail_at_epoch = fail_at_epoch

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        if self.current_epoch == self.fail_at_epoch:
            raise RuntimeError("boom")
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def loader():
    x, y = data()
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=False)


def trainer(tmp_path, max_epochs, **kw):
    from pytorch_lightning.loggers import TensorBoardLogger

    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, logger=TensorBoardLogger(tmp_path),
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, **kw)


def own_loop_rows(epochs=3):
    """The same model, data order and optimiser in a plain loop, tracked with epoch e = after e epochs."""
    x, y = data()
    model = LitNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with infoplane.Tracker(model, x, y, estimators=[BIN]) as t:
        t.step(0)
        for epoch in range(epochs):
            for xb, yb in loader():
                loss = nn.functional.cross_entropy(model(xb), yb)
                opt.zero_grad()
                loss.backward()
                opt.step()
            t.step(epoch + 1)
    return t.run.rows


def test_lightning_callback_equals_own_loop_and_logs_to_tensorboard(tmp_path):
    from infoplane.integrations.lightning import InfoPlaneCallback

    x, y = data()
    cb = InfoPlaneCallback(x, y, estimators=[BIN])
    model = LitNet()
    tr = trainer(tmp_path, 3, callbacks=[cb])
    tr.fit(model, loader())
    # The run directory follows the trainer's log directory.
    assert cb.path == os.path.join(tr.log_dir, "infoplane")
    run = infoplane.load_run(cb.path)
    assert run.meta["complete"] and run.epochs.tolist() == [0, 1, 2, 3]
    assert as_tuples(run.rows) == as_tuples(own_loop_rows(3))
    loss = run.metric("train_loss")[0]  # the logged epoch loss lands in metrics.csv for trained epochs
    assert math.isnan(loss[0]) and all(0 < v < 1 for v in loss[1:])
    assert hook_count(model) == 0
    # TensorBoard, read back with its own reader: every epoch and layer, plus the figure.
    scalars, images = event_scalars(tr.log_dir)
    for layer in run.layers:
        for field in ("ixt", "ity"):
            tag = f"infoplane/binning/{field}/{layer}"
            assert sorted(scalars[tag]) == [0, 1, 2, 3]
            expected = run.get(field)[0, :, run.layers.index(layer)]
            assert [scalars[tag][e] for e in range(4)] == pytest.approx(expected.tolist(), abs=1e-6)
    plane = images["infoplane/binning/plane"]
    assert len(plane) == 1 and plane[0].step == 3 and plane[0].width > 100
    assert plane[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n"


def test_lightning_resume_from_checkpoint_continues_without_duplicates(tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint

    from infoplane.integrations.lightning import InfoPlaneCallback

    x, y = data()
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_epochs=1)
    first = InfoPlaneCallback(x, y, estimators=[BIN])
    trainer(tmp_path, 2, callbacks=[first, ckpt], enable_checkpointing=True).fit(LitNet(), loader())
    assert infoplane.load_run(first.path).epochs.tolist() == [0, 1, 2]
    # A new process: a fresh callback and model, the trainer resumes from the last checkpoint.
    second = InfoPlaneCallback(x, y, estimators=[BIN])
    tr = trainer(tmp_path, 3, callbacks=[second, ModelCheckpoint(dirpath=tmp_path / "ckpt2")],
                 enable_checkpointing=True)
    tr.fit(LitNet(), loader(), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert second.path == first.path  # the same run directory, not the new logger version's
    run = infoplane.load_run(first.path)
    keys = [(r.seed, r.epoch, r.layer, r.estimator) for r in run.rows]
    assert len(keys) == len(set(keys))
    assert run.epochs.tolist() == [0, 1, 2, 3] and run.meta["complete"] and run.meta["resumed"]
    assert as_tuples(run.rows) == as_tuples(own_loop_rows(3))


def test_lightning_exception_closes_the_tracker_and_leaves_no_hook(tmp_path):
    from infoplane.integrations.lightning import InfoPlaneCallback

    x, y = data()
    cb = InfoPlaneCallback(x, y, estimators=[BIN])
    model = LitNet(fail_at_epoch=1)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(tmp_path, 3, callbacks=[cb]).fit(model, loader())
    assert cb.tracker is None and hook_count(model) == 0
    run = infoplane.load_run(cb.path)
    assert run.epochs.tolist() == [0, 1] and run.meta["complete"] is False  # kept, resumable


# ----------------------------------------------------------------------------------------------- TensorBoard
def test_tracker_loggers_tensorboard_dir_and_cli_export(tmp_path):
    from infoplane.cli.main import main

    x, y = data()
    torch.manual_seed(0)
    models = [nn.Sequential(nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 2)) for _ in range(2)]
    with infoplane.Tracker(models, x, y, estimators=[BIN], schedule=[0, 2], out=tmp_path / "run",
                           loggers=str(tmp_path / "tb")) as t:
        for epoch in range(3):
            t.step(epoch)
    scalars, images = event_scalars(tmp_path / "tb")
    # Two seeds: one curve per seed.
    assert set(scalars) == {f"infoplane/binning/{f}/{l}/seed{s}" for f in ("ixt", "ity") for l in t.layers
                            for s in (0, 1)}
    assert scalars["infoplane/binning/ixt/2/seed1"][2] == pytest.approx(t.run.get("ixt", seed=1)[1, 1], abs=1e-6)
    assert list(images) == ["infoplane/binning/plane"]
    # The same from a finished run directory, through the command line.
    assert main(["export", str(tmp_path / "run"), "--tensorboard", str(tmp_path / "exported")]) == 0
    again, images = event_scalars(tmp_path / "exported")
    assert again == scalars and list(images) == ["infoplane/binning/plane"]
    assert main(["export", str(tmp_path / "tb"), "--tensorboard", str(tmp_path / "x")]) == 2  # not a run


def test_cli_track_writes_tensorboard_logs(tmp_path, capsys):
    from infoplane.cli.main import main

    tanh = os.path.join(os.path.dirname(__file__), "..", "examples", "tishby_tanh.py")
    rc = main(["track", tanh, "--fraction", "0.5", "--epochs", "2", "--schedule", "every:1", "--quiet",
               "--no-plot", "--out", str(tmp_path / "runs"), "--tensorboard", str(tmp_path / "tb")])
    assert rc == 0
    run = infoplane.load_run(tmp_path / "runs" / "fraction-0.5")
    scalars, images = event_scalars(tmp_path / "tb")
    assert {f"infoplane/binning/ixt/{layer}" for layer in run.layers} <= set(scalars)
    assert sorted(scalars[f"infoplane/binning/ity/{run.layers[-1]}"]) == run.epochs.tolist()
    assert "infoplane/binning/plane" in images
    assert "tensorboard:" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------------- W&B
def wandb_records(path):
    """Records of a W&B run file (a LevelDB-style log of protobuf records), read with W&B's own protobufs."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, buf = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + n], pos + 7 + n
        if kind == 1:
            buf = chunk
        elif kind in (2, 3):
            buf = (b"" if kind == 2 else buf) + chunk
            continue
        elif kind == 4:
            buf += chunk
        else:
            continue
        record = pb.Record()
        record.ParseFromString(buf)
        yield record


def test_wandb_offline_run_holds_the_scalars_and_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    import json

    import wandb

    x, y = data()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 2))
    # W&B gives its service 90 s to start by default, which a loaded CI machine can miss: no clock to race here.
    wb = wandb.init(project="infoplane-test", dir=str(tmp_path), mode="offline",
                    settings=wandb.Settings(init_timeout=3600))
    try:
        with infoplane.Tracker(net, x, y, estimators=[BIN], schedule=[0, 1, 2], loggers=wb) as t:
            for epoch in range(3):
                t.step(epoch)
    finally:
        wb.finish()
    files = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1
    history, metrics = [], []
    for r in wandb_records(files[0]):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "metric":
            metrics.append(r.metric)
    # The x-axis declaration: W&B records the glob definition, and may also (or, depending on when its service
    # handles the first matching key, only) record it expanded per key; either says the same thing.
    defined = [(m.glob_name or m.name, m.step_metric) for m in metrics]
    assert ("infoplane/*", "infoplane/epoch") in defined or any(
        name.startswith("infoplane/") and step == "infoplane/epoch" for name, step in defined), defined
    rows = [h for h in history if "infoplane/binning/ixt/1" in h]
    assert [h["infoplane/epoch"] for h in rows] == [0, 1, 2]
    for h, e in zip(rows, range(3)):
        for field in ("ixt", "ity"):
            for j, layer in enumerate(t.layers):
                assert h[f"infoplane/binning/{field}/{layer}"] == pytest.approx(t.run.get(field)[0, e, j])
    image = [h for h in history if "infoplane/binning/plane/_type" in h or "infoplane/binning/plane" in h]
    assert image
    assert glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "files" / "media" / "images" / "infoplane" /
                         "binning" / "plane_*.png"))


# ------------------------------------------------------------------------------------------- Hugging Face
def test_huggingface_trainer_callback_on_a_tiny_bert(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    transformers = pytest.importorskip("transformers")
    from infoplane.integrations.huggingface import InfoPlaneTrainerCallback

    cfg = transformers.BertConfig(vocab_size=12, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=16, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    # Toy token task: does token 3 occur? Sequences of 4..8 tokens, padded with 0.
    g = torch.Generator().manual_seed(0)
    n, length = 96, 8
    ids = torch.randint(4, 12, (n, length), generator=g)
    ids[:, 0] = 1  # a [CLS]-like first token
    has = torch.rand(n, generator=g) < 0.5
    ids[has, 2] = 3
    lengths = torch.randint(4, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    ids = ids * mask
    labels = has.long()
    train = [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(n)]
    cb = InfoPlaneTrainerCallback({"input_ids": ids, "attention_mask": mask}, labels, pool="mean",
                                  estimators=[BIN])
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "hf"), num_train_epochs=2,
                                          per_device_train_batch_size=32, learning_rate=1e-3, report_to=[],
                                          use_cpu=True, save_strategy="no", logging_strategy="no",
                                          disable_tqdm=True, seed=0)
    transformers.Trainer(model=model, args=args, train_dataset=train, callbacks=[cb]).train()
    assert cb.path == os.path.join(str(tmp_path / "hf"), "infoplane")
    run = infoplane.load_run(cb.path)
    assert run.layers == ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    assert run.epochs.tolist() == [0, 1, 2] and run.meta["complete"]
    assert [l["pool"] for l in run.meta["layers"]] == ["mean", "mean"]
    assert hook_count(model) == 0
    # The last epoch by hand: the blocks' hidden states, averaged over the real tokens.
    model.eval()
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    w = mask[:, :, None].float()
    for j in range(2):
        pooled = (hidden[j + 1] * w).sum(1) / w.sum(1)
        ref = binned_mi(pooled, labels, bins=30, range=(-1, 1))
        assert run.ixt[2, j] == pytest.approx(float(ref.ixt), abs=1e-12)
        assert run.ity[2, j] == pytest.approx(float(ref.ity), abs=1e-12)
