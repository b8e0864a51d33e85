"""``Learner``: the one object an application holds, on the server and on the device."""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import torch

from .auto_config import content_channels, resolved_settings, settle_for_call, settle_for_data
from .checkpoint import read_learner, save_learner
from .class_statistics import ClassStatistics, class_statistics_of_features, compute_class_statistics
from .collective import Collective, synced_batchnorm
from .compute import autocasts, compile_backend, config_threads, make_cuda_repeatable, resolve_device
from .config import DreamConfig, LearnerConfig
from .privacy.config import PrivacyConfig
from .data.adapters import as_labeled_images
from .data.arrays import images_to_tensor, with_batch_axis
from .data.augment import BatchAugment, to_unit_float
from .data.images import LabeledImages
from .dreaming import DreamReport, ReplaySampler, measure_diversity, train_generator
from .engine import Normalizer, TrainResult, predict_logits, train_task, weight_align
from .errors import ConfigError, ImageSpecError, LabelError, NotFittedError
from .learner_state import LearnerState, build_models, generator_optimizer
from .methods import TaskContext, build_method
from .models.generator import Generator
from .models.resnet import EVAL_BATCH, CifarResNet, eval_features
from .registry import ClassRegistry, resolve_names
from .memory_budget import dream_micro_batch_at_start
from .resources import current_rss_bytes, release_memory
from .reports import LearnReport, NewClassesNotLearnedWarning, Prediction, warn_about

__all__ = ["Learner", "LearnReport", "NewClassesNotLearnedWarning", "Prediction"]

log = logging.getLogger(__name__)


class Learner:
    """A data-free class-incremental learner (ABD by default).

    >>> learner = Learner(LearnerConfig.short_budget())       # doctest: +SKIP
    >>> report = learner.learn_new_classes((images, labels))  # doctest: +SKIP
    >>> learner.predict(images[:8]).names                      # doctest: +SKIP

    Each call learns classes it has never seen, from that call's data alone:
    the first from scratch, later ones with the method's incremental update,
    replaying images dreamed by the generator instead of stored data. A
    failed call (bad input, an error mid-training) leaves the learner as it
    was: the call trains copies and swaps them in only at the end.
    """

    def __init__(self, config: LearnerConfig | None = None, **overrides: Any) -> None:
        cfg = config if config is not None else LearnerConfig()
        if overrides:
            cfg = dataclasses.replace(cfg, **overrides)
        cfg.validate()
        self.config = cfg
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":
            make_cuda_repeatable(cfg.cuda_deterministic)
        self.method = build_method(cfg.method, cfg.losses)
        self._autocast, self._predict_autocast = autocasts(cfg.precision, self.device)
        self._memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
        # More than one torch.distributed process: data-parallel training and dreaming (abd_edge/parallel.py).
        self._collective = Collective.from_environment()
        self._state = LearnerState(ClassRegistry())
        self.history: list[LearnReport] = []

    def reconfigure(self, **overrides: Any) -> None:
        """Change settings between calls (budgets, schedules, method); learned state is untouched.

        The device runtime uses this to apply its update budget to a learner
        loaded from a bundle.
        """
        cfg = dataclasses.replace(self.config, **overrides)
        cfg.validate()
        method = build_method(cfg.method, cfg.losses)
        if method.uses_replay and self._state.model is not None and self._state.generator is None:
            raise ConfigError(
                f"method {cfg.method!r} replays dreamed images, but this learner was trained with "
                f"{self.config.method!r} and has no generator"
            )
        self.config = cfg
        self.method = method
        self._autocast, self._predict_autocast = autocasts(cfg.precision, self.device)
        self._memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format

    # ------------------------------------------------------------ properties
    @property
    def registry(self) -> ClassRegistry:
        return self._state.registry

    @property
    def num_classes(self) -> int:
        return len(self._state.registry)

    @property
    def class_names(self) -> list[str]:
        return self._state.registry.names

    @property
    def model(self) -> CifarResNet:
        self._require_fitted("model")
        assert self._state.model is not None
        return self._state.model

    @property
    def generator(self) -> Generator | None:
        return self._state.generator

    @property
    def normalizer(self) -> Normalizer:
        self._require_fitted("normalizer")
        assert self._state.normalizer is not None
        return self._state.normalizer

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        return self._state.input_shape

    @property
    def tasks_learned(self) -> int:
        return self._state.tasks_learned

    def _require_fitted(self, what: str) -> None:
        if self._state.model is None:
            raise NotFittedError(f"{what} needs a learner that has learned at least one task; call learn_new_classes first")

    # -------------------------------------------------------------- helpers
    def _check_images(self, images: torch.Tensor, shape: tuple[int, int, int] | None) -> None:
        if shape is not None and tuple(images.shape[1:]) != shape:
            raise ImageSpecError(
                f"images have shape (C, H, W) = {tuple(images.shape[1:])}; this learner expects {shape}"
            )

    def _task_seed(self, task_index: int, salt: int = 0) -> int:
        return (self.config.seed * 1_000_003 + task_index * 7919 + salt) % (2**63)

    def _seeded_generator(self, task_index: int, salt: int = 0) -> torch.Generator:
        """A call's random stream; each data-parallel rank gets its own (rank 0's is the one-process stream)."""
        rank = self._collective.rank if self._collective is not None else 0
        g = torch.Generator(device=self.device)
        g.manual_seed(self._task_seed(task_index, salt + 104_729 * rank))
        return g

    # ----------------------------------------------------------- the API
    @config_threads
    def learn_new_classes(
        self,
        dataset: Any,
        class_names: Mapping[Hashable, str] | Sequence[str] | None = None,
        *,
        dream: bool = True,
        time_budget_s: float | None = None,
        show_progress: bool = True,
        privacy: PrivacyConfig | None = None,
    ) -> LearnReport:
        """Learn the classes in ``dataset`` (all new), then dream so the next call can replay them.

        ``dataset``: a torch Dataset of (image, label), an ``(images, labels)``
        pair of tensors/arrays, a path (ImageFolder tree, CIFAR python
        directory, .npz) or a :class:`LabeledImages`. ``class_names``: a dict
        label -> name, or a list aligned with the sorted new labels.
        ``dream=False`` skips generator training (a final task needs none).
        ``time_budget_s`` caps training plus dreaming; the report says if it cut in.
        ``privacy`` makes the update differentially private (DP-SGD through
        Opacus, BatchNorm frozen; docs/PRIVACY.md); a setting that cannot be
        met raises PrivacyError before anything trains.
        """
        data: LabeledImages = as_labeled_images(dataset)
        st = self._state
        # Data-aware defaults (auto_config.py): the shape-dependent "auto" settings are settled at
        # the first task and kept in the config (saved with the learner); batch sizes per call.
        settled = self.config
        if st.model is None or not settled.augment.is_resolved:
            settled = settle_for_data(settled, data.image_shape, len(data), content_channels(data.images))
        cfg, per_call = settle_for_call(settled, len(data))
        self._check_images(data.images, st.input_shape)
        new_labels = data.unique_labels()
        names = resolve_names(new_labels, class_names, data.class_names)
        registry = st.registry.extended(new_labels, names)  # validates labels
        budget = time_budget_s if time_budget_s is not None else cfg.time_budget_s
        deadline = time.perf_counter() + budget if budget is not None else None

        n_old, n_seen = len(st.registry), len(registry)
        first = st.model is None
        plan = None
        collective = self._collective
        if collective is not None:
            collective.refuse_single_process_options(budget, privacy is not None)
        if privacy is not None:
            from .privacy.dp import plan_update

            plan = plan_update(privacy, len(data), cfg.later_tasks, first_task=first)
        task_index = st.tasks_learned
        c, h, w = data.image_shape
        if h != w:
            raise ImageSpecError(f"images must be square, got H={h}, W={w}")
        rng = self._seeded_generator(task_index)

        # Build or copy everything this call will change.
        if first:
            capacity = max(cfg.max_classes, n_seen)
            model, gen = build_models(cfg, replay=self.method.uses_replay, channels=c, size=h, capacity=capacity,
                                      device=self.device, memory_format=self._memory_format)
            gen_opt = generator_optimizer(gen, cfg.dream.lr) if gen is not None else None
            normalizer = self._normalizer_for(data)
            old_model = None
        else:
            assert st.model is not None and st.normalizer is not None
            old_model = st.model
            model = copy.deepcopy(st.model)
            if n_seen > model.num_classes:
                model.grow_head(max(n_seen, 2 * model.num_classes))
            gen = copy.deepcopy(st.generator) if st.generator is not None else None
            gen_opt = st.generator_opt  # kept as it is when this call does not dream (the generator does not change)
            if gen is not None and dream and self.method.uses_replay and cfg.dream.iterations > 0:
                # load_state_dict keeps the tensors it is given: copy them, or this
                # call's Adam steps would mutate the committed state in place.
                previous = st.generator_opt if cfg.dream.keep_optimizer else None
                gen_opt = generator_optimizer(gen, cfg.dream.lr,
                                              None if previous is None else copy.deepcopy(previous.state_dict()))
            normalizer = st.normalizer
        old_frozen = None
        if old_model is not None:
            old_frozen = old_model.eval()
            old_grad = [p.requires_grad for p in old_frozen.parameters()]
            for p in old_frozen.parameters():
                p.requires_grad_(False)

        images = data.images.to(self.device)
        label_idx = torch.tensor(registry.indices_of(data.labels), device=self.device, dtype=torch.long)
        ctx = TaskContext(n_old=n_old, n_seen=n_seen, model=model, old_model=old_frozen)
        tcfg = cfg.first_task if first else cfg.later_tasks
        setup = None
        replay = None
        try:
            if plan is not None:
                from .privacy.dp import LocalData, make_setup
                from .privacy.mean_init import known_class_means

                tcfg = plan.train_config(tcfg)
                seed = privacy.noise_seed if privacy is not None and privacy.noise_seed is not None else int(
                    torch.randint(0, 2**62, (1,), generator=self._seeded_generator(task_index, salt=3), device=self.device))
                setup = make_setup(plan, model, tcfg, self.device, seed, rows=(n_old, n_seen),
                                   local=LocalData(images, label_idx, normalizer, gen, known_class_means(self.privacy_ledger, model),
                                                   statistics=st.class_statistics))
            elif collective is not None:
                from .parallel import DistributedSetup

                setup = DistributedSetup.sharded(model, images.shape[0], tcfg, self.device, collective,
                                                 seed=self._task_seed(task_index))
            backend = compile_backend(cfg, self.device, setup)
            if not first and self.method.uses_replay and gen is not None and old_frozen is not None:
                replay = ReplaySampler(
                    gen, old_frozen, n_old, rng,
                    pool_batches=cfg.replay_pool_batches, batch_size=tcfg.batch_size,
                    memory_format=self._memory_format, autocast=self._autocast, micro_batch=tcfg.micro_batch,
                    compile_backend=backend,
                )
            log.info("task %d: learning %d new classes (%d images) with %s", task_index + 1, len(new_labels), len(data), self.method.name)
            private = plan is not None and plan.config.private
            result = TrainResult()  # a setup that trains nothing (privacy/dp.py ReleaseOnlySetup) set the head when it was made
            if setup is not None and not setup.trains:
                setup.close()  # what train_task's finally does: restores the parameters' requires_grad flags
            else:
                with synced_batchnorm(model, collective):
                    result = train_task(
                        model, self.method, ctx, images, label_idx, tcfg, BatchAugment(cfg.augment), normalizer, rng,
                        replay=replay, memory_format=self._memory_format, autocast=self._autocast,
                        show_progress=show_progress, deadline=deadline, setup=setup,
                        compile_backend=backend, compile_mode=cfg.compile_mode,
                    )
            del replay
            align = None
            if not first and cfg.head_balance == "weight_align":
                align = weight_align(model.get_classifier(), n_old, n_seen)
            if private:
                # Accuracy and feature spread on the local images are statistics of them: a private update reports neither.
                train_acc = None
                probe_x = probe_y = None
                statistics = self._kept_statistics(model)
            else:
                statistics, train_acc = self._statistics_and_accuracy(model, normalizer, images, label_idx, n_seen, rng,
                                                                      tcfg.micro_batch or EVAL_BATCH)
                # A few of this call's images (in locals only, dropped at return) to compare the dreams' spread with.
                probe = torch.arange(0, images.shape[0], max(1, images.shape[0] // 512), device=images.device)[:512]
                probe_x, probe_y = normalizer(to_unit_float(images[probe])), label_idx[probe]
            del images
            release_memory()  # what training freed goes back to the system before dreaming allocates its own
            dream_report = DreamReport(0, 0.0, {}, {})
            diversity = None
            dream_cfg = cfg.dream
            if dream and self.method.uses_replay and gen is not None and gen_opt is not None and cfg.dream.iterations > 0:
                dream_cfg = self._dream_config_within_cap(cfg.dream, gen, h * w)
                dream_report = train_generator(
                    gen, model, n_seen, dream_cfg, gen_opt, self._seeded_generator(task_index, salt=1),
                    memory_format=self._memory_format, autocast=self._autocast,
                    show_progress=show_progress, deadline=deadline, collective=collective,
                    compile_backend=compile_backend(cfg, self.device, None), compile_mode=cfg.compile_mode,
                )
                diversity = measure_diversity(
                    gen, model, n_seen, self._seeded_generator(task_index, salt=3),
                    real_images=probe_x, real_labels=probe_y, memory_format=self._memory_format,
                    batch_size=dream_cfg.micro_batch or 256,
                )
        finally:
            if old_frozen is not None:
                for p, flag in zip(old_frozen.parameters(), old_grad):
                    p.requires_grad_(flag)
        model.eval()
        wanted_dream = cfg.dream.iterations if dream and self.method.uses_replay and gen is not None else 0
        stopped = result.stopped_early or dream_report.iterations < wanted_dream
        report = LearnReport(
            task_index=task_index,
            labels_added=list(new_labels),  # type: ignore[arg-type]
            names_added=names,
            class_indices=list(range(n_old, n_seen)),
            n_images=len(data),
            epoch_losses=[{"epoch": e.epoch, "lr": e.lr, **e.losses} for e in result.epochs],
            train_accuracy=train_acc,
            train_seconds=result.seconds,
            train_images_per_second=result.images_per_second,
            dream_seconds=dream_report.seconds,
            dream_iterations=dream_report.iterations,
            dream_losses=dream_report.last,
            dream_micro_batch=dream_cfg.micro_batch if dream_report.iterations else None,
            stopped_early=stopped,
            head_align_factor=align,
            data_settings=resolved_settings(cfg, per_call),
            learned_new_classes=None if train_acc is None else train_acc >= cfg.new_class_accuracy_floor,
            dream_diversity=diversity.to_dict() if diversity is not None else None,
            privacy=self._ledger_entry(task_index, n_old, n_seen, new_labels, len(data), setup if plan is not None else None, first),
        )
        warn_about(report, cfg.new_class_accuracy_floor)
        # Commit: swap in the new state as a whole.
        self._state = LearnerState(
            registry=registry, model=model, generator=gen, generator_opt=gen_opt,
            normalizer=normalizer, input_shape=(c, h, w), tasks_learned=task_index + 1, class_statistics=statistics,
        )
        self.config = settled
        self.history.append(report)
        return report

    def _dream_config_within_cap(self, dream: DreamConfig, gen: Generator, pixels: int) -> DreamConfig:
        """``dream`` with its micro-batch re-planned from what the process holds now, under ``dream.max_memory_mb``."""
        held = current_rss_bytes()
        if dream.max_memory_mb is None or held is None:
            return dream
        assert isinstance(dream.batch_size, int)  # settled at the first task
        generator_mb = sum(p.numel() for p in gen.parameters()) * 4 / 2**20
        micro, fits = dream_micro_batch_at_start(dream.max_memory_mb, held / 2**20, dream_batch=dream.batch_size,
                                                 pixels=pixels, generator_mb=generator_mb, planned=dream.micro_batch)
        log.info("dreaming under max_memory_mb=%g with %.0f MiB held: micro-batches of %s (planned before training: %s)",
                 dream.max_memory_mb, held / 2**20, micro or dream.batch_size, dream.micro_batch or dream.batch_size)
        if not fits:
            log.warning("dreaming cannot fit max_memory_mb=%g on top of the %.0f MiB held when it starts; it goes on "
                        "with micro-batches of %d, and the cap may be exceeded", dream.max_memory_mb, held / 2**20, micro)
        return dataclasses.replace(dream, micro_batch=micro)

    def _kept_statistics(self, model: CifarResNet) -> ClassStatistics | None:
        """The class statistics to keep after a private update (class_statistics.py): the kept ones while their backbone
        holds, never any of the private data."""
        kept = self._state.class_statistics
        if not self.config.class_statistics:
            return None
        return kept if kept is not None and kept.holds_for(model) else None

    def _statistics_and_accuracy(self, model: CifarResNet, normalizer: Normalizer, images: torch.Tensor, rows: torch.Tensor,
                                 n_seen: int, rng: torch.Generator, batch_size: int) -> tuple[ClassStatistics | None, float]:
        """After a non-private task: the class statistics to keep and the accuracy on the task's own training images.

        The statistics need every image's features in the final backbone; the
        head on those same features gives the accuracy over every image
        (fp32, like the exported model), so one pass does both. That saves
        the second pass over ``train_eval_max_images`` images, about 2 s of
        a 10,000-image device update on 2 cores. Without statistics the
        accuracy is measured on that sample as before. The new statistics
        join the kept ones if the backbone did not change, else replace them.
        """
        if not self.config.class_statistics:
            return None, self._accuracy_on(model, normalizer, images, rows, n_seen, rng, batch_size=batch_size)
        feats = eval_features(model, images, batch_size=batch_size, memory_format=self._memory_format,
                              prepare=lambda x: normalizer(to_unit_float(x)))
        with torch.no_grad():
            accuracy = float((model.forward_head(feats)[:, :n_seen].argmax(1) == rows).float().mean())
        fresh = class_statistics_of_features(model, feats, rows)
        kept = self._state.class_statistics
        return (kept.merged(fresh) if kept is not None and kept.backbone == fresh.backbone else fresh), accuracy  # one fingerprint

    def _ledger_entry(self, task_index: int, n_old: int, n_seen: int, labels: list[Any], n_images: int,
                      setup: Any, first: bool) -> dict[str, Any]:
        from .privacy import ledger

        classes = list(range(n_old, n_seen))
        if setup is None:
            return ledger.non_private_entry(task_index, classes, labels, n_images, first=first)
        return ledger.private_entry(task_index, classes, labels, n_images, setup.ledger_fields(), self.privacy_ledger)

    @property
    def privacy_ledger(self) -> list[dict[str, Any]]:
        """One JSON-safe entry per learned task: epsilon ("inf" if not private), delta, accountant, noise, steps, ...."""
        from .privacy.ledger import ledger_from_history

        return ledger_from_history(self.history)

    @property
    def privacy_summary(self) -> dict[str, Any]:
        from .privacy.ledger import summarize

        return summarize(self.privacy_ledger)

    def _normalizer_for(self, data: LabeledImages) -> Normalizer:
        cfg = self.config
        c = data.image_shape[0]
        if cfg.mean is not None and cfg.std is not None:
            if len(cfg.mean) != c or len(cfg.std) != c:
                raise ConfigError(f"config mean/std have {len(cfg.mean)}/{len(cfg.std)} entries, images have {c} channels")
            mean, std = torch.tensor(cfg.mean), torch.tensor(cfg.std)
        else:
            # The first task's per-channel statistics: a summary the model keeps anyway (like BN's running stats).
            x = to_unit_float(data.images[: 20000])
            mean = x.mean(dim=(0, 2, 3))
            std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
        return Normalizer(mean.float(), std.float()).to(self.device)

    def _accuracy_on(
        self, model: CifarResNet, normalizer: Normalizer, images: torch.Tensor, labels: torch.Tensor, n_seen: int,
        rng: torch.Generator, batch_size: int = EVAL_BATCH,
    ) -> float:
        cap = self.config.train_eval_max_images
        if cap is not None and images.shape[0] > cap:
            idx = torch.randperm(images.shape[0], generator=rng, device=rng.device)[:cap].to(images.device)
            images, labels = images[idx], labels[idx]
        logits = predict_logits(model, images, normalizer, n_seen, self.device, batch_size=batch_size,
                                memory_format=self._memory_format, autocast=self._predict_autocast)
        return float((logits.argmax(1) == labels.cpu()).float().mean())

    # ------------------------------------------------------------ inference
    def _as_images(self, images: Any) -> torch.Tensor:
        self._require_fitted("predict")
        shape = self._state.input_shape
        assert shape is not None
        if isinstance(images, LabeledImages):
            x = images.images
        else:
            x = images_to_tensor(with_batch_axis(images, shape))
        self._check_images(x, shape)
        return x

    @config_threads
    def logits(self, images: Any) -> torch.Tensor:
        """Logits over the seen classes (float32, CPU)."""
        x = self._as_images(images)
        return predict_logits(self.model, x, self.normalizer, self.num_classes, self.device,
                              memory_format=self._memory_format, autocast=self._predict_autocast)

    def predict_proba(self, images: Any) -> torch.Tensor:
        return torch.softmax(self.logits(images), dim=1)

    def predict(self, images: Any) -> Prediction:
        probs = self.predict_proba(images)
        idx = probs.argmax(dim=1)
        reg = self.registry
        return Prediction(idx, [reg.label_of(i) for i in idx.tolist()], [reg.name_of(i) for i in idx.tolist()], probs)

    def evaluate(self, dataset: Any) -> float:
        """Top-1 accuracy over all seen classes on labelled data (labels must be learned ones)."""
        self._require_fitted("evaluate")
        data = as_labeled_images(dataset)
        self._check_images(data.images, self.input_shape)
        targets = torch.tensor(self.registry.indices_of(data.labels))
        pred = self.logits(data).argmax(dim=1)
        return float((pred == targets).float().mean())

    @config_threads
    def record_class_statistics(self, dataset: Any) -> ClassStatistics:
        """Keep class statistics (class_statistics.py) of already-learned classes, from non-private images of them.

        Why: a learner saved before class statistics existed, or learned with
        ``class_statistics=False``, can gain them without retraining: whoever
        learned those classes passes their training images again, and later
        private updates take the old classes from them instead of from dreams.
        The images must not be private ones: the statistics travel with the
        learner and its bundles (docs/PRIVACY.md). Kept statistics of other
        classes in the same backbone are kept too; bad input changes nothing.
        """
        self._require_fitted("record_class_statistics")
        data = as_labeled_images(dataset)
        self._check_images(data.images, self.input_shape)
        rows = torch.tensor(self.registry.indices_of(data.labels), device=self.device)  # LabelError for an unlearned label
        st = self._state
        assert st.model is not None and st.normalizer is not None
        kept = st.class_statistics if st.class_statistics is not None and st.class_statistics.holds_for(st.model) else None
        if kept is not None:
            again = sorted(set(kept.rows) & set(rows.unique().tolist()))
            if again:
                raise LabelError(f"class statistics of labels {[self.registry.label_of(r) for r in again]} are kept already; "
                                 "pass images of the other learned classes only")
        fresh = compute_class_statistics(st.model, data.images.to(self.device), rows,
                                         lambda x: st.normalizer(to_unit_float(x)))  # type: ignore[misc]
        stats = kept.merged(fresh) if kept is not None else fresh
        self._state = dataclasses.replace(st, class_statistics=stats)
        return stats

    @config_threads
    @torch.no_grad()
    def dream(self, n: int, *, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` dreamed images (normalised input space, CPU) and the classes the model gives them."""
        self._require_fitted("dream")
        if self._state.generator is None:
            raise NotFittedError(f"method {self.method.name!r} trains no generator, so there is nothing to dream")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        gen = self._state.generator.eval()
        g = self._seeded_generator(self.tasks_learned, salt=2) if seed is None else torch.Generator(self.device).manual_seed(seed)
        x = gen(gen.sample_latent(n, g))
        labels = self.model.eval()(x.contiguous(memory_format=self._memory_format))[:, : self.num_classes].argmax(1)
        return x.float().cpu(), labels.cpu()

    # ----------------------------------------------------------- persistence
    def save(self, directory: str | Path, *, keep_optimizer: bool | None = None) -> Path:
        """Write weights (safetensors), state (JSON) and a manifest with hashes; atomic.

        ``keep_optimizer=False`` leaves the generator's Adam state out (a bundle's default); None: the config's.
        """
        return save_learner(self, Path(directory), keep_optimizer=keep_optimizer)

    @classmethod
    def load(cls, directory: str | Path, *, device: str | None = None, hashes: bool = True) -> "Learner":
        """Load a directory written by :meth:`save` after checking every file's hash.

        ``hashes=False`` only for files the caller has just verified (a bundle version it has opened).
        """
        saved = read_learner(Path(directory), device=device, hashes=hashes)
        learner = cls(saved.config)
        learner._state, learner.history = saved.state, saved.history
        return learner
