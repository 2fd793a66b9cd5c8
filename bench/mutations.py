"""Break the code on purpose and check that the fast tests notice.

Each entry of MUTATIONS is one breakage (flip a sign, drop a term, swap an argument, skip a module,
change a shipped default) as exact text replacements in one file. For each, a scratch copy of the
repository gets that breakage alone and the fast tests (``pytest -m "not slow" -x``) run against it:
the tests named in the entry, then, if they all pass, the whole fast suite; the breakage is caught
when a test fails. Writes
bench/results/mutations.json and prints one line per breakage.

    python bench/mutations.py               # every breakage
    python bench/mutations.py moco_no_ema   # the named ones

Before calling a new objective tested, add its breakages here and see them caught.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEP_LOSSES = "tests/test_step_losses.py"
GPU_STEP = "tests/test_gpu_step.py"


@dataclass(frozen=True)
class Mutation:
    name: str
    what: str
    file: str
    edits: tuple[tuple[str, str], ...]  # (exact text, replacement); each text must occur exactly once
    first: tuple[str, ...] = (STEP_LOSSES,)  # tests to run before the rest of the fast suite


MUTATIONS = [
    # -- the breakages of issue 14 -----------------------------------------------------------------------
    Mutation("moco_no_ema", "MoCo: the momentum (EMA) update never called", "src/headstart/objectives/moco.py",
             (("            self.momentum_update()  # before the keys, as in MoCo", "            pass"),)),
    Mutation("moco_enqueue_before_loss", "MoCo: this step's keys enqueued before the loss",
             "src/headstart/objectives/moco.py",
             (("        features = self.encode(view1)\n",
               "        if self.training:\n            self.enqueue(keys)\n        features = self.encode(view1)\n"),
              ("        if self.training:\n            self.enqueue(keys)\n        return", "        return"))),
    Mutation("simcse_self_contrast", "SimCSE: a view contrasted with itself", "src/headstart/objectives/simcse.py",
             (("info_nce(z1, z2, self.temperature", "info_nce(z1, z1, self.temperature"),)),
    Mutation("simclr_no_projection", "SimCLR: the loss on backbone features (projection skipped)",
             "src/headstart/objectives/simclr.py",
             (("z1, z2 = self.projection(features).chunk(2)", "z1, z2 = features.chunk(2)"),)),
    Mutation("vae_kl_sign", "VAE: the KL term's sign flipped", "src/headstart/objectives/variational_autoencoder.py",
             (("squared_error.sum(-1).mean() + beta * kl", "squared_error.sum(-1).mean() - beta * kl"),)),
    Mutation("vae_recon_pixel_mean", "VAE: reconstruction as a per-pixel mean",
             "src/headstart/objectives/variational_autoencoder.py",
             (("0.5 * squared_error.sum(-1).mean()", "0.5 * squared_error.mean()"),)),
    Mutation("vae_std_is_variance", "VAE: exp(log_var) used as the std",
             "src/headstart/objectives/variational_autoencoder.py",
             (("torch.randn_like(mean) * (0.5 * log_var).exp()", "torch.randn_like(mean) * log_var.exp()"),)),
    Mutation("dae_noisy_target", "Denoising AE: the corrupted image as the target",
             "src/headstart/objectives/denoising_autoencoder.py",
             (("        features = self.encode(corrupt(pixel_values, self.noise, self.noise_level))\n",
               "        pixel_values = corrupt(pixel_values, self.noise, self.noise_level)\n"
               "        features = self.encode(pixel_values)\n"),)),
    Mutation("mae_norm_pix_inverted", "MAE: norm_pix_loss inverted", "src/headstart/objectives/masked_autoencoder.py",
             (("norm_pix_loss=hp.norm_pix_loss,", "norm_pix_loss=not hp.norm_pix_loss,"),)),
    Mutation("mlm_rows_shifted", "MLM: the head applied to the rows shifted by one", "src/headstart/objectives/masked_lm.py",
             (("        return hidden[selected], labels[selected]",
               "        return hidden.roll(1, dims=1)[selected], labels[selected]"),)),
    Mutation("mlm_probability_default", "A shipped default changed: MLM's mlm_probability 0.15 -> 0.2",
             "src/headstart/config/schema.py",
             (("    mlm_probability: float = 0.15\n", "    mlm_probability: float = 0.2\n"),),
             first=("tests/test_shipped_defaults.py",)),
    Mutation("simclr_temperature_default", "A shipped default changed: SimCLR's temperature",
             "src/headstart/config/schema.py",
             (("    temperature: float = 0.5\n", "    temperature: float = 0.2\n"),),
             first=("tests/test_shipped_defaults.py",)),
    # -- more, to keep the habit -------------------------------------------------------------------------
    Mutation("nt_xent_self_not_masked", "NT-Xent: a view left among its own candidates",
             "src/headstart/objectives/losses.py",
             (("    logits = logits.float().masked_fill(\n        F.one_hot(self_index, num_classes=2 * total).bool(), "
               "float(\"-inf\"))\n", "    logits = logits.float()\n"),)),
    Mutation("info_nce_no_normalise", "InfoNCE: dot products instead of cosine similarities",
             "src/headstart/objectives/losses.py",
             (("    query, key = F.normalize(query, dim=-1), F.normalize(key, dim=-1)\n", ""),)),
    Mutation("moco_momentum_swapped", "MoCo: the EMA keeps (1 - momentum) of the key encoder",
             "src/headstart/objectives/moco.py",
             (("key_param.lerp_(query_param.detach(), 1.0 - self.momentum)",
               "key_param.lerp_(query_param.detach(), self.momentum)"),)),
    Mutation("pool_mean_counts_padding", "Mean pooling averages over the padding too",
             "src/headstart/backbones/pooling.py",
             (("mask = attention_mask.unsqueeze(-1).to(hidden.dtype)",
               "mask = torch.ones_like(attention_mask).unsqueeze(-1).to(hidden.dtype)"),)),
    Mutation("regression_not_standardised", "Regression: the loss on raw targets while predictions are unscaled",
             "src/headstart/heads/regression.py",
             (("        scaled = (targets - self.target_mean) / self.target_std\n", "        scaled = targets\n"),)),
    Mutation("qa_padding_scored", "QA: padding positions left among the start/end candidates",
             "src/headstart/heads/question_answering.py",
             (("        start, end = logits.masked_fill(padding, torch.finfo(logits.dtype).min).unbind(-1)",
               "        start, end = logits.unbind(-1)"),)),
    Mutation("qa_end_loss_dropped", "QA: the end-position loss dropped", "src/headstart/heads/question_answering.py",
             (("F.cross_entropy(start, batch[\"start_positions\"]) + F.cross_entropy(end, batch[\"end_positions\"])) / 2",
               "F.cross_entropy(start, batch[\"start_positions\"]) + F.cross_entropy(start, batch[\"start_positions\"]))"
               " / 2"),)),
    Mutation("vae_kl_term_wrong", "VAE: the KL's -1 term dropped", "src/headstart/objectives/variational_autoencoder.py",
             (("mean.pow(2) + log_var.exp() - 1.0 - log_var", "mean.pow(2) + log_var.exp() - log_var"),)),
    Mutation("distillation_no_temperature_scale", "Distillation: the T^2 factor of the soft loss dropped",
             "src/headstart/objectives/distillation.py",
             (("log_target=True) * temperature ** 2", "log_target=True)"),), first=("tests/test_w2v_kd_units.py",)),
    Mutation("word2vec_negatives_attract", "word2vec: negatives pulled closer instead of pushed away",
             "src/headstart/objectives/word2vec.py",
             (("(F.logsigmoid(-neg) * mask)", "(F.logsigmoid(neg) * mask)"),), first=("tests/test_w2v_kd_units.py",)),
    Mutation("token_classification_scores_padding", "Token classification: unlabelled positions scored as class 0",
             "src/headstart/heads/token_classification.py",
             (("F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)",
               "F.cross_entropy(logits.flatten(0, 1), labels.flatten().clamp(min=0))"),)),
    Mutation("llrd_embeddings_with_the_top_layer", "LLRD: the embeddings given the top layer's rate",
             "src/headstart/transfer/modes.py",
             (("levels[name] = -1 if id(param) in tables or not past_stack else len(blocks)",
               "levels[name] = len(blocks)"),), first=("tests/test_transfer_modes.py",)),
    Mutation("partial_freezes_one_layer_too_many", "Partial freezing: layer N frozen with the N below it",
             "src/headstart/transfer/modes.py",
             (("levels[name] < freeze_layers", "levels[name] <= freeze_layers"),), first=("tests/test_transfer_modes.py",)),
    # -- the held-out test and the gain's interval (issue 20) -------------------------------------------
    Mutation("test_not_held_out_from_dev", "Held-out test: test rows that repeat the dev split kept",
             "src/headstart/data/overlap.py",
             (('"test": ("train", "validation", "corpus")', '"test": ("train", "corpus")'),),
             first=("tests/test_delimited_files.py",)),
    Mutation("small_test_rule_either", "Held-out test: a leftover test refused only when under both minimums",
             "src/headstart/data/overlap.py",
             (("if kept >= min_rows and kept >= min_share * total:", "if kept >= min_rows or kept >= min_share * total:"),),
             first=("tests/test_delimited_files.py",)),
    Mutation("pipeline_data_checked_late", "Pipeline: labelled data checked only when its stage runs (after pretraining)",
             "src/headstart/pipeline/runner.py",
             (("            check_data(stage_cfg)\n", "            pass\n"),),
             first=("tests/test_label_efficiency_files.py",)),
    Mutation("bootstrap_unpaired_examples", "Gain interval: the test examples drawn apart for the two models",
             "src/headstart/pipeline/intervals.py",
             (("seeds, rows = rng.integers(0, k, k), rng.integers(0, n, n)",
               "seeds, rows, rows2 = rng.integers(0, k, k), rng.integers(0, n, n), rng.integers(0, n, n)"),
              ("score(scratch[s][rows], target, num_classes)", "score(scratch[s][rows2], targets[rows2], num_classes)")),
             first=("tests/test_intervals.py",)),
    Mutation("bootstrap_unpaired_seeds", "Gain interval: a seed's fine-tuned run compared with another seed's scratch run",
             "src/headstart/pipeline/intervals.py",
             (("score(scratch[s][rows], target, num_classes)", "score(scratch[(s + 1) % k][rows], target, num_classes)"),),
             first=("tests/test_intervals.py",)),
    Mutation("text_recipe_pretraining_unbounded", "A shipped default changed: the text recipe's pretraining step bound",
             "conf/experiment/label_efficiency_text_files.yaml",
             (("      - trainer.max_steps=10000\n", ""),), first=("tests/test_shipped_defaults.py",)),
    Mutation("min_test_rows_default", "A shipped default changed: the smallest held-out test 100 -> 10 rows",
             "src/headstart/config/schema.py",
             (("    min_test_rows: int = 100\n", "    min_test_rows: int = 10\n"),), first=("tests/test_shipped_defaults.py",)),
    Mutation("interval_quartiles", "Gain interval: the 25th-75th percentiles reported as the 95% interval",
             "src/headstart/pipeline/intervals.py",
             (("np.percentile(gains, [tail, 100 - tail])", "np.percentile(gains, [25, 75])"),),
             first=("tests/test_intervals.py",)),
    # -- issue 21: what a fast GPU step relies on, checked on the CPU ------------------------------------
    Mutation("throughput_reads_every_step", "Throughput counts read (the device waited for) at every step",
             "src/headstart/throughput.py",
             (("        if not trainer.fit_loop._should_accumulate() and trainer._logger_connector.should_update_logs:",
               "        if True:"),), first=(GPU_STEP,)),
    Mutation("progress_bar_reads_every_step", "Training values for the bar logged with prog_bar (read every step)",
             "src/headstart/module.py",
             (("prog_bar=prog_bar and not on_step", "prog_bar=prog_bar"),), first=(GPU_STEP,)),
    Mutation("nan_guard_reads_every_step", "The NaN guard reads each loss at its step on an accelerator too",
             "src/headstart/training_guards.py",
             (("        if not reading_waits(loss) or len(self._pending) >= every:", "        if True:"),),
             first=(GPU_STEP,)),
    Mutation("mlm_drawn_positions_compiled", "Masked LM: the head at the drawn positions (a data-dependent shape)",
             "src/headstart/objectives/masked_lm.py",
             (("        if not (torch.compiler.is_compiling() or reading_waits(labels)):", "        if True:"),),
             first=(GPU_STEP,)),
    Mutation("masking_cap_ignored", "Masking draws more tokens than the fixed-shape step has room for",
             "src/headstart/data/collators.py", (("        if surplus > 0:", "        if False:"),),
             first=(GPU_STEP,)),
    Mutation("full_attention_mask_kept", "An all-ones attention mask kept (attention off its mask-free kernels)",
             "src/headstart/data/collators.py",
             (("    if mask is not None and bool(mask.all()):", "    if False:"),), first=(GPU_STEP,)),
    Mutation("packed_blocks_short_last_batch", "Packed blocks keep the short last batch (a second graph shape)",
             "src/headstart/data/text_lm.py",
             (('        return self.packing == "blocks" or self.static_shapes',
               '        return self.packing != "blocks" and self.static_shapes'),), first=(GPU_STEP,)),
    Mutation("compiled_lines_unpadded", "Line data for a compiled step left at each batch's own length",
             "src/headstart/data/text_lm.py",
             (("            self.collator.pad_to_multiple_of = self.max_length\n", ""),), first=(GPU_STEP,)),
    Mutation("padded_vocab_scored", "The padded vocabulary's extra rows scored in the loss and predictions",
             "src/headstart/module.py",
             (("        return logits if self.padded_vocab_from is None else logits[..., : self.padded_vocab_from]",
               "        return logits"),), first=(GPU_STEP,)),
    Mutation("padded_vocab_exported", "The export keeps the padded vocabulary", "src/headstart/module.py",
             (("        if self.padded_vocab_from is not None:  # the export has the tokenizer's vocabulary",
               "        if False:  # the export has the tokenizer's vocabulary"),), first=(GPU_STEP,)),
    Mutation("mfu_plugin_dtype", "MFU against the peak of Lightning's reading of the precision (float32)",
             "src/headstart/throughput.py",
             (("        dtype = compute_dtype_of(trainer.precision)", "        dtype = torch.float32"),),
             first=(GPU_STEP,)),
    Mutation("gpu_preset_uncompiled", "A shipped default changed: trainer=gpu without the compiled step",
             "conf/trainer/gpu.yaml", (("  compile: true", "  compile: false"),), first=(GPU_STEP,)),
    # -- issue 22: the protocol behind every published number ---------------------------------------------
    Mutation("select_on_test_metric", "Settings (learning rate, search) chosen on the test metric, not validation",
             "src/headstart/pipeline/runner.py",
             (("    return result.metrics[monitor]\n", "    return result.metrics[monitor.replace(\"val/\", \"test/\")]\n"),),
             first=("tests/test_protocol.py",)),
    Mutation("select_min_of_max_monitor", "Settings chosen at the minimum of a max monitor (and the reverse)",
             "src/headstart/pipeline/runner.py",
             (('maximize = next(iter(candidates.values()))[1].monitor_mode == "max"',
               'maximize = next(iter(candidates.values()))[1].monitor_mode == "min"'),), first=("tests/test_protocol.py",)),
    Mutation("select_reports_another_run", "The chosen settings reported with another candidate's run (its test score)",
             "src/headstart/pipeline/runner.py",
             (("    settings, result = candidates[best]\n",
               "    settings, result = candidates[best][0], list(candidates.values())[-1][1]\n"),), first=("tests/test_protocol.py",)),
    Mutation("text_subset_same_every_seed", "Text data: the same labelled subset drawn at every seed",
             "src/headstart/data/text_classification.py",
             (('self.label_amount.subset(self.datasets["train"], self.seed, stratify_by="labels")',
               'self.label_amount.subset(self.datasets["train"], 0, stratify_by="labels")'),), first=("tests/test_protocol.py",)),
    Mutation("label_amount_on_dev_and_test", "Text data: the label amount applied to the dev and test splits too",
             "src/headstart/data/text_classification.py",
             (('        self.datasets["train"] = self.label_amount.subset(self.datasets["train"], self.seed, '
               'stratify_by="labels")\n',
               '        for split in list(self.datasets):\n'
               '            self.datasets[split] = self.label_amount.subset(self.datasets[split], self.seed, '
               'stratify_by="labels")\n'),), first=("tests/test_protocol.py",)),
    Mutation("data_seed_not_the_runs", "Text data: the subset drawn with a seed of its own, not the run's seed",
             "src/headstart/config/schema.py",
             (('    cache_dir: str = II("paths.cache_dir")\n    seed: int = II("seed")\n',
               '    cache_dir: str = II("paths.cache_dir")\n    seed: int = 42\n'),), first=("tests/test_protocol.py",)),
    Mutation("label_count_one_short", "label_count=n keeps n-1 rows where labels have no classes",
             "src/headstart/data/subsets.py",
             (("    wanted = count if count is not None else round(fraction * size)\n",
               "    wanted = count - 1 if count is not None else round(fraction * size)\n"),), first=("tests/test_protocol.py",)),
    Mutation("label_count_one_over", "label_count=n keeps n+1 rows where labels have no classes",
             "src/headstart/data/subsets.py",
             (("    wanted = count if count is not None else round(fraction * size)\n",
               "    wanted = count + 1 if count is not None else round(fraction * size)\n"),), first=("tests/test_protocol.py",)),
    Mutation("regression_scaled_by_every_label", "Regression at label_count=n: targets scaled by all the split's labels",
             "src/headstart/data/text_regression.py",
             (("        if not self.label_amount.everything:  # scaled by the labels the run keeps, none of the others'\n",
               "        if False:\n"),), first=("tests/test_protocol.py",)),
    Mutation("tokenizer_trained_on_every_split", "The tokenizer trained on the dev and test text too",
             "src/headstart/data/text_base.py",
             (('self._trained_tokenizer(raw["train"], split_files)',
               'self._trained_tokenizer(datasets.concatenate_datasets(list(raw.values())), split_files)'),),
             first=("tests/test_protocol.py",)),
    Mutation("scratch_loses_trainer_overrides", "Scratch baseline: the fine-tune stage's trainer.* overrides lost",
             "src/headstart/pipeline/runner.py",
             (('untransferred = [o for o in finetune_overrides if not override_key(o).startswith("transfer")]',
               'untransferred = [o for o in finetune_overrides if not override_key(o).startswith(("transfer", "trainer"))]'),),
             first=("tests/test_protocol.py",)),
    Mutation("scratch_keeps_transfer_settings", "Scratch baseline: the fine-tuned model's transfer.* settings kept",
             "src/headstart/pipeline/runner.py",
             (('untransferred = [o for o in finetune_overrides if not override_key(o).startswith("transfer")]',
               "untransferred = list(finetune_overrides)"),), first=("tests/test_protocol.py",)),
    Mutation("scratch_seed_differs", "Scratch baseline: trained at another seed than its fine-tuned pair",
             "src/headstart/pipeline/runner.py",
             (('[*amount["overrides"], f"seed={seed}"]', '[*amount["overrides"], f"seed={seed + (model == \'scratch\')}"]'),),
             first=("tests/test_protocol.py",)),
    Mutation("every_run_first_seed", "Every seed's runs trained at the first seed", "src/headstart/pipeline/runner.py",
             (('[*amount["overrides"], f"seed={seed}"]', '[*amount["overrides"], f"seed={seeds[0]}"]'),),
             first=("tests/test_protocol.py",)),
    Mutation("seeds_won_counts_ties", "Seeds won: a tie counted as a win", "src/headstart/pipeline/label_efficiency.py",
             (("(lambda a, b: a > b)", "(lambda a, b: a >= b)"),), first=("tests/test_protocol.py",)),
    Mutation("seeds_won_counts_ties_lower", "Seeds won (lower is better): a tie counted as a win",
             "src/headstart/pipeline/label_efficiency.py", (("(lambda a, b: a < b)", "(lambda a, b: a <= b)"),),
             first=("tests/test_protocol.py",)),
    Mutation("linear_probe_freezes_nothing", "Linear probe: no backbone weight frozen", "src/headstart/transfer/modes.py",
             (('    if mode == "linear_probe":\n        return set(names)\n', '    if mode == "linear_probe":\n        return set()\n'),),
             first=("tests/test_protocol.py",)),
    Mutation("linear_probe_backbone_in_train_mode", "Linear probe: the backbone left in train mode (dropout on)",
             "src/headstart/transfer/modes.py", (("        backbone.eval()\n", ""),), first=("tests/test_protocol.py",)),
    Mutation("linear_probe_not_kept_in_eval", "Linear probe: the backbone back in train mode when the module's is set",
             "src/headstart/transfer/modes.py",
             (("        module.frozen_modules = [backbone]  # HeadstartModule.train keeps these in eval mode\n", ""),),
             first=("tests/test_protocol.py",)),
    Mutation("scratch_loads_pretrained", "Scratch baseline: the pretrained weights loaded", "src/headstart/pipeline/stage.py",
             (('if not export_dir or cfg.transfer.mode == "scratch":', "if not export_dir:"),), first=("tests/test_protocol.py",)),
    Mutation("scratch_own_tokenizer", "Scratch baseline: a tokenizer of its own, not the export's",
             "src/headstart/pipeline/stage.py",
             (('source = cfg.data.get("tokenizer") or (str(export_dir) if export_dir else spec.name_or_path)',
               'source = cfg.data.get("tokenizer") or (str(export_dir) if export_dir and cfg.transfer.mode != "scratch" '
               'else spec.name_or_path)'),), first=("tests/test_protocol.py",)),
    Mutation("init_scope_ignored", "model.init_scope=embeddings ignored by the stage: the whole backbone loads",
             "src/headstart/pipeline/stage.py", (('getattr(spec, "init_scope", "backbone")', '"backbone"'),),
             first=("tests/test_protocol.py",)),
    Mutation("gradual_unfreezing_never", "Gradual unfreezing: the backbone never unfrozen",
             "conf/callbacks/gradual_unfreezing.yaml",
             (("  unfreeze_backbone_at_epoch: 2\n", "  unfreeze_backbone_at_epoch: 1000\n"),), first=("tests/test_protocol.py",)),
    Mutation("gradual_unfreezing_schedule_not_kept", "Gradual unfreezing: the task's schedule over the added group",
             "conf/callbacks/gradual_unfreezing.yaml",
             (("  _target_: headstart.transfer.unfreezing.GradualUnfreezing\n",
               "  _target_: lightning.pytorch.callbacks.BackboneFinetuning\n"),), first=("tests/test_protocol.py",)),
    Mutation("tested_last_checkpoint", "The test split scores the last checkpoint, not the best on validation",
             "src/headstart/pipeline/stage.py",
             (("tested = trainer.test(module, datamodule=datamodule, ckpt_path=best or None,",
               "tested = trainer.test(module, datamodule=datamodule, ckpt_path=None,"),), first=("tests/test_protocol.py",)),
    Mutation("checkpoint_mode_always_max", "The best checkpoint: the highest value of any monitor (of a loss too)",
             "conf/callbacks/default.yaml",
             (("  mode: ${task.monitor_mode}\n  save_top_k: 1\n", "  mode: max\n  save_top_k: 1\n"),),
             first=("tests/test_protocol.py",)),
    Mutation("regression_monitor_max", "Regression: validation MSE maximised", "src/headstart/config/schema.py",
             (('    monitor: str = "val/mse"\n    monitor_mode: str = "min"\n',
               '    monitor: str = "val/mse"\n    monitor_mode: str = "max"\n'),), first=("tests/test_protocol.py",)),
    # -- issue 22, section 1: an export is data -----------------------------------------------------------
    Mutation("export_any_target", "Export allow-list: any _target_ string is built",
             "src/headstart/config/allowlist.py",
             (("                if not isinstance(value, str) or value not in allowed:",
               "                if not isinstance(value, str):"),), first=("tests/test_untrusted_files.py",)),
    Mutation("export_data_config_unchecked", "mode=predict/evaluate: the export's data_config is not checked",
             "src/headstart/pipeline/inference.py",
             (('    check_buildable(exported, data_module_targets(), source, "data_config", "data modules")',
               "    pass"),), first=("tests/test_untrusted_files.py",)),
    Mutation("export_requires_import_trusted", "Loading an export imports the module its requires_import names",
             "src/headstart/transfer/export.py",
             (("    module = registering_module(export_dir)",
               '    module = meta.get("requires_import") or registering_module(export_dir)'),),
             first=("tests/test_untrusted_files.py",)),
    # -- issue 22, section 2: the smaller defects ---------------------------------------------------------
    Mutation("seed_unranged", "seed has no range: seed=-1 reaches seed_everything's traceback",
             "src/headstart/config/checks.py",
             (('    "seed": Range(0, 2**32 - 1, integer=True, also=(), why="the random seed; seeds are unsigned 32-bit integers"),\n',
               ""),), first=("tests/test_small_defects.py",)),
    Mutation("ranges_allow_infinity", "Value checks: inf passes every unbounded range (task.optimizer.lr=inf)",
             "src/headstart/config/checks.py",
             (("        if not math.isfinite(value):\n            return False\n", ""),),
             first=("tests/test_small_defects.py",)),
    Mutation("stale_export_kept", "A killed run's export.tmp<pid>/ is never removed on resume",
             "src/headstart/pipeline/rundir.py",
             (("    if not is_secondary_rank():\n        remove_stale_exports(output_dir)\n", ""),),
             first=("tests/test_small_defects.py",)),
    Mutation("pipeline_data_unchecked",
             "A pipeline's downstream data is not read before pretraining (single class found after it)",
             "src/headstart/pipeline/runner.py",
             (("            check_data(stage_cfg)\n", "            pass\n"),), first=("tests/test_small_defects.py",)),
    Mutation("label_count_beyond_silent", "label_count beyond the data: no warning",
             "src/headstart/data/subsets.py",
             (('        _warn_if_beyond(count, len(labels), sizes.max() if sampling == "per_class" else None)\n', ""),),
             first=("tests/test_small_defects.py",)),
    Mutation("label_count_beyond_table", "The label-efficiency table shows the count asked, not the rows kept",
             "src/headstart/pipeline/label_efficiency.py",
             (("    if count is not None and n < count:", "    if False:"),), first=("tests/test_small_defects.py",)),
    Mutation("data_dir_as_missing_file", "A directory given as a data file is reported as missing",
             "src/headstart/data/files.py",
             (("        if p.is_dir():\n", "        if False:\n"),), first=("tests/test_small_defects.py",)),
    Mutation("knn_k_zero_refused", "task.knn_k=0 (documented: kNN off) refused by the range check",
             "src/headstart/config/checks.py",
             (('"task.knn_k": Range(0, integer=True,', '"task.knn_k": Range(1, integer=True,'),),
             first=("tests/test_small_defects.py",)),
    Mutation("image_folder_unchecked", "Image folders not read before a pipeline trains (single class found late)",
             "src/headstart/data/vision.py",
             (("        return _folder_splits(self.dirs, self.val_fraction, self.seed)\n", "        return None\n"),),
             first=("tests/test_small_defects.py",)),
]


def _copy_repository(target: Path) -> None:
    ignore = shutil.ignore_patterns(".git", "outputs", "multirun", ".cache", "__pycache__", "*.egg-info", "results",
                                    ".ruff_cache", ".pytest_cache", "wandb")
    shutil.copytree(ROOT, target, ignore=ignore)


def _apply(source: str, mutation: Mutation) -> str:
    for old, new in mutation.edits:
        count = source.count(old)
        if count != 1:
            raise SystemExit(f"mutation {mutation.name}: the text to replace occurs {count} times in {mutation.file} "
                             f"(must be once; update the entry to the code): {old!r}")
        source = source.replace(old, new)
    return source


def _pytest(scratch: Path, tests: list[str], timeout: int) -> tuple[int, str]:
    env = {**os.environ, "PYTHONPATH": str(scratch / "src"), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "offline"}
    # A few named tests: one process (two xdist workers would cost more to start than they save).
    workers = ["-n", "0"] if tests != ["tests"] else []
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow", *workers, *tests]
    try:
        done = subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, "timed out"
    return done.returncode, done.stdout + done.stderr


def _first_failure(output: str) -> str | None:
    for line in output.splitlines():
        if line.startswith("FAILED ") or line.startswith("ERROR "):
            return line.split(" ", 1)[1].split(" - ")[0]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="the mutations to run (default: all)")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per mutation")
    args = parser.parse_args()
    unknown = set(args.names) - {m.name for m in MUTATIONS}
    if unknown:
        raise SystemExit(f"unknown mutations: {', '.join(sorted(unknown))}; known: "
                         f"{', '.join(m.name for m in MUTATIONS)}")
    chosen = [m for m in MUTATIONS if not args.names or m.name in args.names]

    with tempfile.TemporaryDirectory(prefix="headstart-mutants-") as tmp:
        scratch = Path(tmp) / "repo"
        _copy_repository(scratch)
        firsts = sorted({t for m in chosen for t in m.first})
        code, output = _pytest(scratch, firsts, args.timeout)
        if code != 0:  # the breakages are judged against tests that pass on the code as it is
            raise SystemExit(f"the tests {firsts} fail before any mutation:\n{output[-3000:]}")
        rows = []
        for mutation in chosen:
            path = scratch / mutation.file
            original = path.read_text()
            path.write_text(_apply(original, mutation))
            start = time.perf_counter()
            try:
                # pytest orders what it collects by path, not by argument: the named tests run alone first.
                code, output = _pytest(scratch, list(mutation.first), args.timeout)
                if code in (0, 5):
                    code, output = _pytest(scratch, ["tests"], args.timeout)
            finally:
                path.write_text(original)
            caught = code not in (0, 5)  # 5: no test collected
            row = {"name": mutation.name, "what": mutation.what, "file": mutation.file, "caught": caught,
                   "failed_test": _first_failure(output) if caught else None,
                   "seconds": round(time.perf_counter() - start, 1)}
            rows.append(row)
            print(f"{'caught ' if caught else 'MISSED '} {mutation.name:36s} {row['failed_test'] or ''}", flush=True)

    caught = sum(r["caught"] for r in rows)
    print(f"\n{caught} of {len(rows)} breakages caught by the fast tests")
    # The record keeps one row per breakage: a run of some of them replaces theirs.
    record = ROOT / "bench" / "results" / "mutations.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(record.read_text())["mutations"] if record.is_file() else []
    known = {m.name for m in MUTATIONS}
    merged = {r["name"]: r for r in earlier if r["name"] in known} | {r["name"]: r for r in rows}
    merged_rows = [merged[m.name] for m in MUTATIONS if m.name in merged]
    record.write_text(json.dumps({"caught": sum(r["caught"] for r in merged_rows), "total": len(merged_rows),
                                  "mutations": merged_rows}, indent=2) + "\n")
    sys.exit(0 if caught == len(rows) else 1)


if __name__ == "__main__":
    main()
