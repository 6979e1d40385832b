"""SPSA on batch-dependent models (issue 22 item 8): one image at a time.

With batch-shared adaptive step control (dopri5, ``step_control="batch"``, torchdiffeq's way)
an image's logits depend on the other images in its solve. Batched SPSA then lets an image's
batch-mates move its result; ``per_image`` attacks every image on its own, as the SONet
reference did. The peer here is the attack run on the image alone.
"""

from __future__ import annotations

import pytest
import torch

from robustode.attacks import SPSA, AttackInputError, batch_shared_step_control, create_attack
from robustode.evaluate.suites import PAPER, parse_spec
from robustode.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

F64 = torch.float64


def _soblock(step_control: str) -> torch.nn.Module:
    """SOBlock (skew ODE stem, dopri5 at tol 0.1) at width 4 on 8×8 one-channel images."""
    model = create_model(
        "soblock", width=4, in_channels=1, num_classes=10, seed=0, step_control=step_control
    )
    return model.double().eval()


def _images(n: int = 5) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(3), dtype=F64)


def _own_labels(model, x) -> torch.Tensor:
    """Each image's prediction on its own, so every image is clean-correct when alone."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + 1]).argmax(1) for i in range(x.shape[0])])


def _spsa(per_image) -> SPSA:
    # early_stop=False: every image stays in the batch for every iteration, so batched SPSA
    # draws image 0's directions from the same positions of its stream whatever its mates
    return SPSA(0.05, iterations=4, samples=4, early_stop=False, seed=7, per_image=per_image)


def test_the_batch_dependent_model_is_detected_and_its_outputs_move_with_the_batch():
    shared, own = _soblock("batch"), _soblock("per_sample")
    assert batch_shared_step_control(shared) and not batch_shared_step_control(own)
    assert not batch_shared_step_control(create_model("resnet10", width=4))
    x = _images()
    with torch.no_grad():
        together, alone = shared(x), torch.cat([shared(x[i : i + 1]) for i in range(5)])
        assert float((together - alone).abs().max()) > 1e-4
        together, alone = own(x), torch.cat([own(x[i : i + 1]) for i in range(5)])
        assert float((together - alone).abs().max()) <= 1e-10


@pytest.mark.parametrize("per_image", [True, "auto"])
def test_per_image_spsa_gives_each_image_its_result_alone(per_image):
    """Image i's adversarial, verdict and query count are those of attacking it alone
    (bitwise: the same computation), whatever batch it comes in."""
    model = _soblock("batch")
    x = _images()
    y = _own_labels(model, x)
    attack = _spsa(per_image)
    assert attack.queries_one_image_at_a_time(model)
    batched = attack.run(model, x, y)
    assert bool(batched.clean_correct.all())
    for i in range(x.shape[0]):
        alone = attack.run(model, x[i : i + 1], y[i : i + 1])
        assert torch.equal(batched.x_adv[i : i + 1], alone.x_adv)
        assert torch.equal(batched.success[i : i + 1], alone.success)
        assert torch.equal(batched.queries[i : i + 1], alone.queries)
    swapped = attack.run(model, x.flip(0), y.flip(0))  # another order: the same per image
    assert torch.equal(swapped.x_adv.flip(0), batched.x_adv)


def _image_0_with_two_batch_mates(model, attack):
    x = _images()
    y = _own_labels(model, x)
    first = attack.run(model, x[[0, 1, 2]], y[[0, 1, 2]]).x_adv[0]
    second = attack.run(model, x[[0, 3, 4]], y[[0, 3, 4]]).x_adv[0]
    return float((first - second).abs().max())


def test_batched_spsa_moves_an_image_with_its_batch_mates_only_on_the_batch_dependent_model():
    """Without per_image, image 0 in batches [0, 1, 2] and [0, 3, 4] draws the same random
    directions (same position, no early stop): on the per-sample model its adversarial is
    the same to 1e-9; on the batch-shared one the batch-mates move it. With per_image the
    batch-shared model's result is the same again."""
    batched = _spsa(False)
    assert _image_0_with_two_batch_mates(_soblock("per_sample"), batched) <= 1e-9
    assert _image_0_with_two_batch_mates(_soblock("batch"), batched) > 1e-4
    assert _image_0_with_two_batch_mates(_soblock("batch"), _spsa(True)) == 0.0


def test_auto_leaves_batch_independent_models_batched():
    model = _soblock("per_sample")
    assert not _spsa("auto").queries_one_image_at_a_time(model)
    assert _spsa(True).queries_one_image_at_a_time(model)
    assert not _spsa(False).queries_one_image_at_a_time(_soblock("batch"))


def test_the_sonet_spsa_preset_is_per_image_auto_and_bad_values_are_named():
    attack = create_attack("spsa")
    assert attack.per_image == "auto" and "per image auto" in attack.describe()
    assert parse_spec("spsa:per_image=true").create().per_image is True
    assert parse_spec("spsa:per_image=auto").create().per_image == "auto"
    assert "spsa" in PAPER
    for bad in ("sometimes", 1, None):
        with pytest.raises(AttackInputError, match="per_image must be true, false or 'auto'"):
            SPSA(per_image=bad)


def test_probes_alone_query_the_single_image_model():
    """probes_together=False: every probe is a solve of its own, so on the batch-shared model
    the attack sees the image-alone function — the function per-sample step control computes
    for every row of any batch. Both attacks must agree (same seed, same directions), and
    with the same query count as the batched probes."""
    x = _images(3)
    shared, own = _soblock("batch"), _soblock("per_sample")
    y = _own_labels(shared, x)
    alone = SPSA(0.05, iterations=3, samples=3, seed=7, per_image=True, probes_together=False)
    reference = SPSA(0.05, iterations=3, samples=3, seed=7, per_image=True)
    a, r = alone.run(shared, x, y), reference.run(own, x, y)
    assert float((a.x_adv - r.x_adv).abs().max()) <= 1e-9
    assert torch.equal(a.success, r.success) and torch.equal(a.queries, r.queries)
    # the probes of one image in one solve (the default) see another function on this model
    together = reference.run(shared, x, y)
    assert float((together.x_adv - a.x_adv).abs().max()) > 1e-4
