"""Chapter 19, "Distillation and adversarial examples": the notebook runs in smoke mode (FGSM from scratch against
kdlib's, defensive distillation and its undoing, an adversarially trained teacher, KD / ARD / adversarial
training of the student), and its glued values are consistent."""

from __future__ import annotations

from notebook_support import NOTEBOOKS, run_smoke

NOTEBOOK = NOTEBOOKS / "19_adversarial_examples.ipynb"


def test_adversarial_examples_smoke(tmp_path):
    nb, g = run_smoke(NOTEBOOK, tmp_path)
    outputs = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "identical to kdlib's fgsm: True" in outputs  # the four-line FGSM is kdlib's, bit for bit
    assert 0 < g["eps_norm"] and abs(g["eps_norm"] * 0.3530 - g["eps_pixels"]) < 1e-3  # 0.1 pixels / Fashion-MNIST std
    percents = [v for k, v in g.items() if k.startswith(("dd_", "kd_", "ard_", "at_", "alone_", "teacher_"))
                and not k.endswith(("seconds", "best_final", "temperature", "alpha"))]
    assert percents and all(0 <= v <= 100 for v in percents)
    for arm in ("alone", "kd", "ard", "at"):
        # the strongest check is at least as strong as PGD alone, and no attack raises accuracy above clean
        assert g[f"{arm}_strong"] <= g[f"{arm}_pgd"] <= g[f"{arm}_clean"]
        assert g[f"{arm}_seconds"] > 0
    assert g["check_gap_mean"] >= 0 and g["long_epochs"] == 2 * g["epochs"]
    assert 0 <= g["zero_grad_normal"] <= 100 and 0 <= g["zero_grad_defended"] <= 100
    assert g["chapter_minutes"] > 0
