"""Attribution methods are classes in one registry: a new method registered in one place works through Explainer."""

import pytest
import torch

from aft_hf.explain import (
    METHODS,
    AttributionMethod,
    Explainer,
    ExplainError,
    available_methods,
    method_label,
    register_method,
    resolve_method,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def toy_method():
    """A class-agnostic toy method: the map is each pixel's red value times ``gain``."""

    @register_method
    class RedChannel(AttributionMethod):
        name, aliases, needs_target = "red_channel", ("red",), False
        options = {"gain": 1.0}

        def raw_maps(self, images, targets):
            return self.gain * images[:, :1]

    yield RedChannel
    METHODS.pop(RedChannel.name)


def test_a_registered_method_works_through_explainer(toy_method, tiny_encoder, batch):
    assert "red_channel" in available_methods() and resolve_method("Red") == "red_channel"
    assert method_label("red_channel") == "red_channel"  # figures fall back to the name
    maps = Explainer(tiny_encoder, "red", postprocess=False, gain=2.0, progress=False, batch_size=3).attribute(batch)
    assert maps.shape == (4, 1, 32, 32) and torch.allclose(maps, 2 * batch[:, :1])
    post = Explainer(tiny_encoder, "red_channel", progress=False).attribute(batch)
    assert post.amin() == 0 and post.amax() == 1  # the shared post-processing ran
    with pytest.raises(ExplainError, match="no option"):
        Explainer(tiny_encoder, "red_channel", strength=3)


def test_builtin_methods_are_registered_with_their_aliases():
    assert available_methods()[:6] == ("saliency", "integrated_gradients", "smoothgrad", "gradcam", "attention",
                                       "rollout")
    assert resolve_method("IG") == "integrated_gradients" and resolve_method("grad-cam") == "gradcam"
    assert METHODS["rollout"].needs_target is False and METHODS["gradcam"].needs_vit
    assert method_label("gradcam") == "Grad-CAM" and method_label("saliency") == "Simple Gradient"


def test_vit_methods_refuse_a_non_vit_encoder():
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(4))
    with pytest.raises(ExplainError, match="needs a ViT"):
        Explainer(encoder, "gradcam")
