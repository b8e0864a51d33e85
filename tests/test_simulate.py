"""The device simulation goes through the gated local update: a refused update is reported, the run goes on."""

import json

from abd_edge.apps.simulate import default_budget, format_row, run_simulation
from abd_edge.export.quality import QualityGate


def test_a_rejected_update_is_reported_and_the_run_goes_on(tmp_path):
    budget = default_budget("digits")
    budget.epochs, budget.dream_iterations = 1, 2
    # No model has every |logit| below 1e-9: this gate refuses every update, on both updating devices.
    gate = QualityGate(max_abs_logit=1e-9)
    doc = run_simulation("digits", tasks=5, out_dir=tmp_path / "sim", budget=budget, server_epochs=1,
                         server_dream_iters=2, max_steps=1, gate=gate)
    row = doc["rows"][1]
    assert set(row["rejected"]) == {"abd", "finetune"}
    assert any("max_abs_logit" in reason for reason in row["rejected"]["abd"])
    # nothing was committed: both devices still serve the base version, as the never-updated one does
    assert row["acc_abd"] == row["acc_static"] == row["acc_finetune"] and row["update_seconds"] is None
    assert [h["version"] for h in doc["history"]] == ["v000001"]
    saved = json.loads((tmp_path / "sim" / "simulation.json").read_text())
    assert saved["rows"][1]["rejected"] == row["rejected"] and saved["simulation"]["quality_gate"] == gate.to_dict()
    assert format_row(row).split()[-1] == "abd,finetune" and format_row(doc["rows"][0]).split()[-1] == "-"
