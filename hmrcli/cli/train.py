"""``hmrcli train``: train (or fine-tune) a Multi-RoI / CLIFF regressor from a configuration
file, with the paper's losses (full-image 2D reprojection per RoI, camera consistency,
contrastive). Thin layer over :mod:`hmrcli.train.loop`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.markup import escape

from hmrcli.cli._output import print_json, progress_bar, stderr, stdout, want_json

_TERMS = ("kp2d", "kp3d", "vertices", "pose", "betas", "camera", "contrast")


def _fmt_metrics(res: dict[str, Any]) -> str:
    parts = []
    for name, r in res.items():
        vals = "  ".join(f"{k} {r[k]:.1f}" for k in ("MPJPE", "PA-MPJPE", "PVE") if r.get(k) is not None)
        parts.append(f"{name} ({r.get('count', 0)} persons): {vals or '-'} mm")
    return "; ".join(parts)


def _init_lines(rep: dict[str, Any]) -> list[str]:
    lines = [f"init from {rep['path']} ({rep['layout']}): loaded {rep['loaded']} of {rep['total']} tensors"]
    if rep["shape_mismatch"]:
        lines.append(f"  not loaded, shape differs ({len(rep['shape_mismatch'])}): "
                     + ", ".join(f"{k} file {tuple(a)} vs model {tuple(b)}" for k, a, b in rep["shape_mismatch"]))
    if rep["missing"]:
        lines.append(f"  not in the file ({len(rep['missing'])}, left at their initial values): "
                     + ", ".join(rep["missing"][:12]) + (" ..." if len(rep["missing"]) > 12 else ""))
    if rep["unexpected"]:
        lines.append(f"  in the file only, ignored ({len(rep['unexpected'])}): "
                     + ", ".join(rep["unexpected"][:12]) + (" ..." if len(rep["unexpected"]) > 12 else ""))
    return lines


class _Display:
    """Rich progress bar on stderr with the loss terms; plain lines for the other events."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.progress = None
        self.task = None

    def __call__(self, ev: dict[str, Any]) -> None:
        kind = ev["event"]
        if kind == "start":
            self._start(ev)
        elif kind == "step":
            if self.progress is not None:
                losses = ev["losses"]
                terms = " ".join(f"{k} {losses[k]:.3g}" for k in _TERMS if k in losses)
                self.progress.update(self.task, completed=ev["step"],
                                     info=f"loss {losses['loss']:.4g}  {terms}  lr {ev['lr']:.2e}")
        elif kind == "checkpoint":
            self._line(f"checkpoint step {ev['step']}: {ev['path']}")
        elif kind == "eval":
            self._line(f"eval step {ev['step']}: {_fmt_metrics(ev['test'])}")
        elif kind == "end":
            self.stop()

    def _line(self, text: str) -> None:
        if self.quiet:
            return
        con = self.progress.console if self.progress is not None else stderr
        con.print(escape(text), highlight=False)

    def _start(self, ev: dict[str, Any]) -> None:
        if not self.quiet:
            what = f"resuming {ev['resumed_from']}" if ev["resumed_from"] else "training"
            stderr.print(escape(f"{what}: step {ev['step']} of {ev['steps']} on {ev['device']} ({ev['precision']}), "
                                f"{ev['train_rows']} training rows, {ev['parameters'] / 1e6:.1f} M parameters, "
                                f"body model {ev['body_model']}, output {ev['output']}"), highlight=False)
            for note in ev["notes"]:
                stderr.print(escape(f"note: {note}"), style="yellow", highlight=False)
            if ev["init"] and not ev["resumed_from"]:
                for line in _init_lines(ev["init"]):
                    stderr.print(escape(line), highlight=False)
        if self.quiet:
            return
        self.progress, self.task = progress_bar("train", ev["steps"], completed=ev["step"], field="info",
                                                remaining=True)
        self.progress.start()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def train(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="Configuration file (.toml, .json, or "
                      ".yaml/.yml with PyYAML). See --example-config.", show_default=False)] = None,
    overrides: Annotated[Optional[list[str]], typer.Option("--set", "-s", help="Override one field: dotted "
                         "key=value, e.g. --set losses.contrast=0 --set model.num_rois=1 --set data.train.0.ratio=0.5 "
                         "(repeat the option).", show_default=False)] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in the output folder from its newest "
                      "checkpoint (same step, optimizer, schedule, RNG and data order). Without --config the run's "
                      "own config.json is used (give --output).")] = False,
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output folder (same as --set output=DIR).",
                      show_default=False)] = None,
    print_config: Annotated[bool, typer.Option("--print-config", help="Print the resolved configuration as JSON "
                            "and exit.")] = False,
    example_config: Annotated[bool, typer.Option("--example-config", help="Print an example TOML configuration "
                              "and exit.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    json_out: Annotated[Optional[bool], typer.Option("--json/--no-json", help="Print the result as JSON (default: "
                        "when stdout is not a terminal).")] = None,
) -> None:
    """Train a regressor with the Multi-RoI losses (docs/method.md §6): 2D keypoints through
    each RoI's full-image camera, 3D joints, vertices, SMPL pose and betas, camera consistency
    between the M local cameras, and the supervised contrastive loss; each term has a weight
    (0 switches it off). Data: SPIN/CLIFF .npz files mixed by ratio (hmrcli.train.synthetic
    writes a synthetic one). Initialise from a native, authors' or CLIFF checkpoint with
    model.init. Writes checkpoints (native format + training state), metrics.jsonl and the
    final model.safetensors/.json into the output folder; --resume continues an interrupted
    run exactly.

    Configuration (every field also settable with --set): top level batch_size, steps,
    precision (fp32|bf16), device, output, checkpoint_every, keep_checkpoints, log_every,
    eval_every, seed, threads; model.* arch (multiroi|cliff|imphmr|pointhmr), backbone,
    num_rois, crop_hw, aspect, aggregation, n_iter, head_dim, init, mean_params, body_model,
    smpl_dir; losses.* scale, kp2d, kp3d, vertices, pose, betas, camera, contrast, camera_form
    (code|paper), temperature, kp2d_norm, mesh_source, ImpHMR's view, silhouette, consistency,
    view_azimuth_range, silhouette_extent, PointHMR's heatmap, heatmap_sigma, point_vertices,
    point_joints, point_kp2d (docs/method.md §10-11); optim.* name (adam|adamw), lr, weight_decay, betas, grad_clip;
    schedule.* name (constant|cosine|linear|step), warmup_steps, min_lr_ratio, step_size,
    gamma; data.* num_workers, test_limit, augment.*, and the dataset lists data.train.N.*
    / data.test.N.* (path, img_root, ratio, name)."""
    from hmrcli.train.config import (  # start-up: loads torch (~3 s), kept out of `hmrcli --help`
        ConfigError,
        config_to_dict,
        example_toml,
        load_config,
    )
    from hmrcli.train.loop import TrainError, TrainInterrupted
    from hmrcli.train.loop import train as run_train

    if example_config:
        sys.stdout.write(example_toml())
        return
    sets = list(overrides or [])
    if output is not None:
        sets.append(f"output={output}")
    try:
        if config is None and resume:
            if output is None:
                raise ConfigError("--resume without --config needs --output DIR (the run's folder)")
            saved = Path(output) / "config.json"
            if not saved.is_file():
                raise ConfigError(f"{saved}: not found; give --config")
            cfg = load_config(saved, sets)
        elif config is None:
            raise ConfigError("give --config FILE (hmrcli train --example-config prints an example)")
        else:
            cfg = load_config(config, sets)
    except ConfigError as e:
        stderr.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    if print_config:
        print_json(config_to_dict(cfg)) if want_json(json_out) else stdout.print_json(json.dumps(config_to_dict(cfg)))
        return
    display = _Display(quiet)
    try:
        res = run_train(cfg, resume=resume, progress=display)
    except TrainInterrupted as e:
        display.stop()
        where = f"; checkpoint {e.checkpoint}" if e.checkpoint else ""
        stderr.print(f"interrupted at step {e.step}{where}. Continue with: hmrcli train --resume --output {cfg.output}",
                     markup=False, highlight=False)
        raise typer.Exit(130) from None
    except (TrainError, ConfigError) as e:
        display.stop()
        stderr.print(f"error: {e}", markup=False, highlight=False)
        raise typer.Exit(2) from None
    finally:
        display.stop()
    summary = {"output": str(res.output), "checkpoint": str(res.checkpoint), "step": res.step,
               "seconds": round(res.seconds, 1), "last_losses": res.last_losses, "metrics": res.metrics,
               "init": res.init_report}
    if want_json(json_out):
        print_json(summary)
        return
    stdout.print(escape(f"done: {res.step} steps in {res.seconds:.0f} s -> {res.checkpoint}"), highlight=False)
    if res.metrics.get("test"):
        stdout.print(escape(f"test: {_fmt_metrics(res.metrics['test'])}"), highlight=False)


def register(app: typer.Typer) -> None:
    app.command("train")(train)
