"""The built-in sweep architectures: each one's analytic kernel agrees with
its empirical draws and its controls do not (slow: one statistical agreement
test over the whole zoo), and `kernel_width_free` is declared exactly where
it holds (default run, exact)."""

from __future__ import annotations

import pytest

from nt_frozen.validation import ARCHITECTURES, run_validation

# The CNN's identity-guess control needs >= 256 channels to be rejected.
DECISIVE = {"cnn-frozen-conv-block": ([256, 1024], 8)}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_every_architecture_passes_and_rejects_its_controls(name):
    arch = ARCHITECTURES[name]
    widths, samples = DECISIVE.get(name, ([128, 512], 6))
    [result] = run_validation([arch], widths=widths, samples=samples)
    assert result.frozen.verdict == "PASS", (name, result.frozen.reasons)
    assert set(result.controls) == set(arch.control_names)
    for control_name, control in result.controls.items():
        if isinstance(control, str):  # equal to the frozen kernel: not scored
            continue
        assert control.verdict == "FAIL", (name, control_name)
    assert result.ok


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_kernel_width_free_is_declared_exactly_where_the_kernels_ignore_the_width(
    name, x64
):
    """The sweep traces a `kernel_width_free` architecture's analytic kernels at
    one width and reuses them at all: the declaration must hold for the frozen
    network and every control (each network's `kernel_fn` at widths 16 and
    256, float64), and an architecture whose kernels do ignore the width
    should declare it (standard parameterization must not: its NTK scales with
    the width)."""
    import jax
    import numpy as np

    from nt_frozen.validation.statistics import relative_frobenius_error

    arch = ARCHITECTURES[name]
    x = jax.random.normal(jax.random.PRNGKey(0), arch.input_shape)

    def kernels(width):
        networks = {"frozen": arch.network(width)} | {
            c: arch.control_network(c, width) for c in arch.control_names
        }
        return {n: np.asarray(net[2](x, None, "ntk")) for n, net in networks.items()}

    narrow, wide = kernels(16 * arch.width_divisor), kernels(256 * arch.width_divisor)
    differences = {n: relative_frobenius_error(wide[n], narrow[n]) for n in narrow}
    assert all(np.isfinite(d) for d in differences.values()), differences
    ignores_width = all(d < 1e-12 for d in differences.values())
    assert arch.kernel_width_free == ignores_width, differences
