"""ServerApp: typed config -> initial model -> strategy.start -> save artefacts."""

from __future__ import annotations

import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.config import load_scenario, parse_run_config
from common.factory import build_model, initial_trainable_state, scenario_schema
from common.storage import atomic_write_bytes
from server.checkpoint import load_checkpoint
from server.aggregation import check_aggregation
from server.grid import PromptGrid, window_for
from server.identity import resolve_registry, scenario_branches
from server.recorder import RunRecorder
from server.optimizers import build_strategy
from server.strategy import validation_kwargs

__all__ = ["app"]

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run = parse_run_config(context.run_config)
    scenario = load_scenario(run.paths.scenario_file)
    # replies checked every reply-poll-interval s (Flower's grid: 3 s); in a simulation at most
    # max-messages-in-flight messages pushed and unanswered (server/grid.py)
    prompt = PromptGrid(grid, poll_s=run.federation.reply_poll_interval,
                        max_in_flight=window_for(grid, run.federation.max_in_flight))
    if run.privacy_mode == "central":  # site-level DP via Flower's DP wrapper: a run of its own (server/central.py)
        from server.central import run_central

        return run_central(prompt, context, run=run, scenario=scenario)
    registry = resolve_registry(grid, run, scenario)  # who each node is: the scenario, or the operator's registration
    grid = prompt
    federation_id = run.federation.federation_id or f"run-{context.run_id}"
    model = build_model(run.model, scenario=scenario, seed=run.federation.seed)
    initial = initial_trainable_state(model)
    # Resume: a restarted ServerApp with the same federation-id and out-dir continues after the
    # last checkpointed round (Flower's run id changes across restarts; the federation id does not).
    ckpt = load_checkpoint(run.paths.out_dir, federation_id=federation_id) if run.paths.out_dir else None
    done = ckpt.round if ckpt else 0

    # a robust aggregator that could never combine some branch with the federation's sites is refused before round 1
    check_aggregation(run.aggregation.aggregator, run.aggregation.num_malicious_sites,
                      {b: len(registry.holders(b)) for b in scenario_branches(scenario)})
    recorder = RunRecorder(
        out_dir=run.paths.out_dir, federation_id=federation_id, run_id=str(context.run_id),
        registered_keys={s.name: s.public_key for s in registry.declared if s.public_key},
        run_info={
            "scenario": scenario.name, "scenario_description": scenario.description,
            "modalities": list(scenario.modalities), "num_rounds": run.federation.num_rounds,
            "fusion": run.model.fusion, "text_encoder": run.model.text_encoder,
            "modality_dropout": run.train.modality_dropout, "strategy": run.strategy.name,
            "accountant_note": (f"epsilon = {run.privacy.accountant.upper()} accountant (Opacus), used for "
                                "calibration, enforcement and reporting; epsilon_rdp = RDP, a conservative figure; "
                                "add/remove-one-record neighbouring relation, per site (sample-level DP)"),
            "data_note": " ".join(scenario_schema(scenario).note.split()) or scenario.description,
            "schema": scenario_schema(scenario).name,
            "aggregation": {"aggregator": run.aggregation.aggregator, "weighting": run.aggregation.weighting,
                            "num_malicious_sites": run.aggregation.num_malicious_sites,
                            "max_update_norm": run.aggregation.max_update_norm, "sites_bound_by": registry.source},
        },
    )
    if ckpt:
        recorder.restore()
        initial = ckpt.arrays
    strategy = build_strategy(  # `strategy` setting: Flower's FedProx / FedOpt on the modality-aware merge
        run.strategy, **validation_kwargs(run, registry),  # who each node is, what its replies are checked against
        recorder=recorder, round_offset=done, fold_evaluation=run.federation.fold_evaluation,
        fraction_train=run.federation.fraction_train,
        min_train_nodes=run.federation.min_train_nodes,
        fraction_evaluate=run.federation.fraction_evaluate,
        min_evaluate_nodes=min(run.federation.min_train_nodes, run.federation.min_available_nodes),
        min_available_nodes=run.federation.min_available_nodes,
    )
    started = time.time()
    config = ConfigRecord({"federation-id": federation_id, "num-server-rounds": run.federation.num_rounds})
    final = ArrayRecord({k: Array(np.asarray(v)) for k, v in initial.items()}) if ckpt else ArrayRecord(initial)
    if done < run.federation.num_rounds:
        result = strategy.start(
            grid=grid, initial_arrays=final, num_rounds=run.federation.num_rounds - done,
            timeout=run.federation.round_timeout, train_config=config, evaluate_config=ConfigRecord(dict(config)),
        )
        final = result.arrays if len(result.arrays) else final
    if run.federation.fold_evaluation and run.federation.fraction_evaluate > 0:
        strategy.evaluate_final(grid, final, ConfigRecord(dict(config)), server_round=run.federation.num_rounds,
                                timeout=run.federation.round_timeout)
    recorder.run_info["duration_s"] = round(time.time() - started, 1)
    recorder.run_info["completed"] = True
    if run.paths.out_dir is not None:
        from safetensors.numpy import save

        arrays = {k: v.numpy() for k, v in final.items()}
        atomic_write_bytes(run.paths.out_dir / "model.safetensors",
                           save(arrays, metadata={"federation_id": federation_id, "scenario": scenario.name}))
    recorder.flush()
