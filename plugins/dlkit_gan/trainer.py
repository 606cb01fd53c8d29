"""The ``gan`` trainer: alternating discriminator and generator updates, with checkpoints."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from dlkit import Callback, CurvePlot, EpochLoop, InputError, MetricsLog, ProgressBar, TrainingDiverged, resolve_device

from .grid import class_rows, save_grid

SAMPLES = "samples.png"
EPOCH_GRIDS = "epochs"  # per-epoch grids: <version>/epochs/epoch-0001.png
GRID_SAMPLES = 64  # unconditional grids: 8 x 8


class DiscriminatorCollapsed(TrainingDiverged):
    """The discriminator wins outright: its loss stays near its floor and G gets no signal."""


def validate(config: dict) -> None:
    """Refuse option values no run could use, naming the option."""
    checks = [
        ("epochs", config["epochs"] >= 1, "must be >= 1"),
        ("batch_size", config["batch_size"] >= 2, "must be >= 2"),
        ("lr", config["lr"] > 0, "must be > 0"),
        ("d_lr", config["d_lr"] >= 0, "must be >= 0 (0: the same as lr)"),
        ("beta1", 0 <= config["beta1"] < 1, "must be in [0, 1)"),
        ("beta2", 0 <= config["beta2"] < 1, "must be in [0, 1)"),
        ("loss", config["loss"] in ("nonsaturating", "hinge"), "must be nonsaturating or hinge"),
        ("label_smoothing", 0 <= config["label_smoothing"] < 0.5, "must be in [0, 0.5)"),
        ("d_steps", config["d_steps"] >= 1, "must be >= 1"),
        ("grid_every", config["grid_every"] >= 0, "must be >= 0 (0: no per-epoch grids)"),
        ("ema", 0 <= config["ema"] < 1, "must be in [0, 1) (0: no weight averaging)"),
        ("collapse_steps", config["collapse_steps"] >= 0, "must be >= 0 (0: no collapse check)"),
        ("collapse_loss", config["collapse_loss"] > 0, "must be > 0"),
        ("samples", config["samples"] >= 10, "must be >= 10"),
        ("judge_epochs", config["judge_epochs"] >= 1, "must be >= 1"),
        ("judge", bool(str(config["judge"]).strip()), "must be auto, none or a model NAME[:V]"),
    ]
    for key, ok, why in checks:
        if not ok:
            raise InputError(f"train.{key} {why}, got {config[key]!r}")


def repository_of(run):
    """The repository a run is staged in (``<root>/<name>/.staging/<run>``)."""
    from dlkit import STAGING, ModelRepository

    if getattr(run, "repo", None) is not None:
        return run.repo
    workdir = Path(run.workdir).resolve()
    if workdir.parent.name != STAGING:
        raise InputError(f"train.judge=auto needs a run staged in a model repository, not {workdir}")
    return ModelRepository(workdir.parents[2])


class LiveLosses(ProgressBar):
    """The progress bar, showing the running discriminator and generator losses as it moves."""

    def on_step_end(self, trainer, step, logs):
        super().on_step_end(trainer, step, logs)
        if logs:
            self.progress.update(self.task, status=f"d_loss {logs['d_loss']:.3f}  g_loss {logs['g_loss']:.3f}")


class GanTrainer(EpochLoop):
    """Two networks, two Adam optimizers, alternating minibatch updates, on dlkit's epoch loop."""

    def __init__(self, run):
        cfg = run.config
        workdir = Path(run.workdir)
        steps = max(1, len(run.data.y_train) // cfg["batch_size"])
        callbacks: list[Callback] = [
            MetricsLog(workdir / "metrics.jsonl"),
            CurvePlot(workdir / "curves.png", [("loss", ["d_loss", "g_loss"]),
                                               ("discriminator score", ["d_real", "d_fake"])]),
        ]
        if not run.quiet:
            callbacks.insert(0, LiveLosses(cfg["epochs"], steps, ["d_loss", "g_loss", "d_real", "d_fake", "seconds"]))
        super().__init__(run, callbacks)
        self.steps = steps
        betas = (cfg["beta1"], cfg["beta2"])
        self.opt_g = torch.optim.Adam(self.model.generator.parameters(), lr=cfg["lr"], betas=betas)
        self.opt_d = torch.optim.Adam(self.model.discriminator.parameters(), lr=cfg["d_lr"] or cfg["lr"], betas=betas)
        self.optimizers = {"optim_g": self.opt_g, "optim_d": self.opt_d}
        self.low_d_steps = 0  # consecutive steps with the discriminator's loss near its floor
        # An exponential moving average of the generator's weights (buffers copied): the
        # averaged generator is what gets sampled, saved and exported; it smooths out the
        # step-to-step oscillation of adversarial training.
        generator = self.model.generator
        self.params = [n for n, _ in generator.named_parameters()]
        self.ema_state = {k: v.detach().clone() for k, v in generator.state_dict().items()} if cfg["ema"] else None
        self.ema_updates = 0
        # The same noise (and labels) every epoch, so the per-epoch grids show one sample evolving.
        g = torch.Generator().manual_seed(run.seed + 1)
        gan = self.model
        if gan.conditional:
            labels = class_rows(gan.num_classes, gan.num_classes * 10)
            self.grid_labels = torch.as_tensor(labels, device=self.device)
            self.grid_shape = (gan.num_classes, 10)
        else:
            self.grid_labels = None
            self.grid_shape = (8, 8)
        n = self.grid_shape[0] * self.grid_shape[1]
        self.fixed_noise = torch.randn(n, gan.latent, generator=g).to(self.device)
        self.floor = self.d_loss_floor()
        self._data: tuple | None = None

    # -- losses ----------------------------------------------------------------------------------
    def d_loss(self, real_scores, fake_scores):
        if self.config["loss"] == "hinge":
            return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()
        target = real_scores.new_full(real_scores.shape, 1.0 - self.config["label_smoothing"])
        return (F.binary_cross_entropy_with_logits(real_scores, target)
                + F.binary_cross_entropy_with_logits(fake_scores, fake_scores.new_zeros(fake_scores.shape)))

    def g_loss(self, fake_scores):
        if self.config["loss"] == "hinge":
            return -fake_scores.mean()
        # non-saturating: maximise log D(G(z)) rather than minimise log(1 - D(G(z)))
        return F.binary_cross_entropy_with_logits(fake_scores, fake_scores.new_ones(fake_scores.shape))

    def d_loss_floor(self) -> float:
        """The lowest loss a perfect discriminator can reach (above 0 with label smoothing)."""
        s = self.config["label_smoothing"]
        if self.config["loss"] == "hinge" or s == 0:
            return 0.0
        return -(1 - s) * math.log(1 - s) - s * math.log(s)

    # -- state beyond the loop's (model, optimizers and RNG are the loop's) -----------------------
    def extra_state(self) -> tuple[dict, dict]:
        tensors = {f"ema.{k}": v for k, v in (self.ema_state or {}).items()}
        return tensors, {"low_d_steps": self.low_d_steps, "ema_updates": self.ema_updates}

    def load_extra_state(self, tensors: dict, state: dict) -> None:
        if self.ema_state is not None:
            self.ema_state = {k[4:]: v.to(self.device) for k, v in tensors.items() if k.startswith("ema.")}
        self.low_d_steps, self.ema_updates = state["low_d_steps"], state["ema_updates"]

    # -- samples ---------------------------------------------------------------------------------
    def update_ema(self) -> None:
        # Warm-up: average over about the last third of the steps so far until that reaches
        # 1 / (1 - ema) steps, so that early grids do not show the random start.
        self.ema_updates += 1
        decay = min(self.config["ema"], (1 + self.ema_updates) / (4 + self.ema_updates))
        state = self.model.generator.state_dict()
        with torch.no_grad():
            averaged = [self.ema_state[n] for n in self.params]
            torch._foreach_lerp_(averaged, [state[n] for n in self.params], 1.0 - decay)
            for key, value in state.items():
                if key not in self.params:  # batch-norm statistics follow the live generator
                    self.ema_state[key].copy_(value)

    def save_samples(self, path: Path) -> None:
        gan = self.model
        was_training = gan.training
        live = None
        if self.ema_state is not None:
            live = {k: v.clone() for k, v in gan.generator.state_dict().items()}
            gan.generator.load_state_dict(self.ema_state)
        gan.eval()
        with torch.inference_mode():
            images = gan(self.fixed_noise, self.grid_labels).float().cpu().numpy()
        if live is not None:
            gan.generator.load_state_dict(live)
        gan.train(was_training)
        save_grid(path, images, (gan.low, gan.high), *self.grid_shape)

    # -- one epoch ---------------------------------------------------------------------------------
    def _tensors(self) -> tuple:
        if self._data is None:
            data, gan = self.run.data, self.model
            self._data = (gan.from_data_range(torch.as_tensor(data.x_train, dtype=torch.float32)).to(self.device),
                          torch.as_tensor(data.y_train, dtype=torch.long).to(self.device))
        return self._data

    def train_epoch(self, epoch: int) -> dict:
        cfg, gan = self.config, self.model
        x, y = self._tensors()
        n, bs = len(x), cfg["batch_size"]
        gan.train()
        order = torch.randperm(n).to(self.device)
        sums = torch.zeros(4, device=self.device)  # d_loss, g_loss, d_real, d_fake
        for step in range(self.steps):
            idx = order[step * bs:(step + 1) * bs]
            values = self.train_step(x[idx], y[idx] if gan.conditional else None)
            d_value, g_value = (float(v) for v in values[:2].cpu())
            self._check(epoch, step, d_value, g_value, self.floor)
            sums += values
            self.step_end(step, {"d_loss": d_value, "g_loss": g_value})
        d_mean, g_mean, real_mean, fake_mean = (float(v) for v in (sums / self.steps).cpu())
        if cfg["grid_every"] and epoch % cfg["grid_every"] == 0:
            self.save_samples(self.workdir / EPOCH_GRIDS / f"epoch-{epoch:04d}.png")
        return {"d_loss": d_mean, "g_loss": g_mean, "d_real": real_mean, "d_fake": fake_mean}

    def train_step(self, real, real_labels):
        """``d_steps`` discriminator updates, then one generator update; returns the four
        statistics (d_loss, g_loss, mean real score, mean fake score) as one tensor."""
        cfg, gan = self.config, self.model
        generator, discriminator = gan.generator, gan.discriminator
        bs, classes, cond = cfg["batch_size"], gan.num_classes, gan.conditional
        # discriminator: real images up, generated ones down
        for _ in range(cfg["d_steps"]):
            fake_labels = torch.randint(0, classes, (bs,), device=self.device) if cond else None
            with torch.no_grad():
                fake = generator(torch.randn(bs, gan.latent, device=self.device), fake_labels)
            real_scores = discriminator(real, real_labels)
            fake_scores = discriminator(fake, fake_labels)
            d_loss = self.d_loss(real_scores, fake_scores)
            self.opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            self.opt_d.step()
        # generator: make the discriminator call its images real
        fake_labels = torch.randint(0, classes, (bs,), device=self.device) if cond else None
        discriminator.requires_grad_(False)
        fake_scores = discriminator(generator(torch.randn(bs, gan.latent, device=self.device), fake_labels),
                                    fake_labels)
        g_loss = self.g_loss(fake_scores)
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        if self.ema_state is not None:
            self.update_ema()
        discriminator.requires_grad_(True)
        return torch.stack([d_loss.detach(), g_loss.detach(), real_scores.detach().mean(), fake_scores.detach().mean()])

    def finish(self, logs: dict) -> dict:
        if self.ema_state is not None:  # from here on the generator is the averaged one
            self.model.generator.load_state_dict(self.ema_state)
        self.save_samples(self.workdir / SAMPLES)
        self.model.eval()
        return {"epochs": self.epoch, "train_seconds": round(self.seconds, 3),
                "d_loss": logs.get("d_loss"), "g_loss": logs.get("g_loss"), "stopped_early": False,
                "samples": SAMPLES}

    def _check(self, epoch: int, step: int, d_value: float, g_value: float, floor: float) -> None:
        """Stop on NaN/inf losses, or on a discriminator that has won for ``collapse_steps``."""
        cfg = self.config
        if not (math.isfinite(d_value) and math.isfinite(g_value)):
            raise TrainingDiverged(
                f"GAN training diverged: d_loss {d_value}, g_loss {g_value} in epoch {epoch} step {step + 1}; "
                f"stopped. Train again with a lower --lr, or --set spectral_norm=true or loss=\"hinge\""
            )
        if not cfg["collapse_steps"]:
            return
        self.low_d_steps = self.low_d_steps + 1 if d_value - floor < cfg["collapse_loss"] else 0
        if self.low_d_steps >= cfg["collapse_steps"]:
            raise DiscriminatorCollapsed(
                f"GAN training collapsed: the discriminator loss stayed within {cfg['collapse_loss']} of its "
                f"minimum for {self.low_d_steps} steps (epoch {epoch}), so the generator learns nothing; "
                f"stopped. Train again with --set d_lr=<smaller>, spectral_norm=true or label_smoothing=0.1"
            )


def fit(run) -> dict:
    """Train ``run.model`` (a :class:`~dlkit_gan.model.GAN`) and measure its samples' quality."""
    from . import quality

    validate(run.config)
    cfg = run.config
    n = len(run.data.y_train)
    if n < cfg["batch_size"]:
        raise InputError(f"train.batch_size={cfg['batch_size']} is larger than the {n} training images")
    resolve_device(cfg["device"])  # an unavailable --device is bad input, found before the judge is trained
    judge_ref = str(cfg["judge"]).strip()
    judge = None
    if judge_ref != "none":
        # Before training: a judge that cannot be had is bad input, found before the work starts.
        repo = repository_of(run)
        with torch.random.fork_rng():  # training the judge must not shift the GAN's random stream
            version = quality.obtain_judge(judge_ref, run.data, repo, run.seed, cfg["judge_epochs"], run.quiet)
        judge = quality.Judge(version)
    metrics = GanTrainer(run).fit()
    if judge is not None:
        gan = run.model.cpu().eval()
        with torch.random.fork_rng():
            torch.manual_seed(run.seed + 2)
            untrained = run.spec.build(gan.hparams, run.data.input_spec, run.data.num_classes).eval()
        metrics.update(quality.measure(gan, judge, run.data.x_train, cfg["samples"], run.seed + 3, untrained))
        if not run.quiet:
            print(quality.summary(metrics), file=sys.stderr)
    return metrics
