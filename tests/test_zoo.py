"""Model zoo: published parameter counts, MACs, torchvision names, and shape inference."""

import pytest

from dcnn.errors import InputError, ShapeError
from dcnn.network.graph import format_cost_table, parse_shape
from dcnn.network.layers import Conv2d, Linear
from dcnn.network.zoo import get_model, model_names

PUBLISHED_PARAMS = {
    "lenet5": 61_706,
    "alexnet": 61_100_840,
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
    # torchvision's model cards (googlenet without its auxiliary heads).
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "mobilenet_v2": 3_504_872,
    "mobilenet_v3_small": 2_542_856, "squeezenet1_1": 1_235_496, "googlenet": 6_624_904,
}

#: Published multiply-accumulates at 224x224 (torchvision's model cards, GFLOPS there meaning GMACs), in GMAC.
PUBLISHED_GMACS = {"resnet18": 1.81, "resnet34": 3.66, "resnet50": 4.09, "mobilenet_v2": 0.30,
                   "mobilenet_v3_small": 0.06, "squeezenet1_1": 0.35, "googlenet": 1.50}


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_published(name):
    assert get_model(name).num_params() == PUBLISHED_PARAMS[name]


def test_every_zoo_model_is_covered():
    assert set(model_names()) == set(PUBLISHED_PARAMS)


def test_vgg16_macs_and_bytes():
    rows = get_model("vgg16").costs((3, 224, 224))
    assert sum(r.macs for r in rows) == 15_470_264_320
    assert sum(r.param_bytes for r in rows) == 4 * 138_357_544
    conv = next(r for r in rows if r.name == "features.2")
    # The paper's C_conv: k_{l-1} k_l u v p q.
    assert conv.macs == 64 * 64 * 3 * 3 * 224 * 224
    fc = next(r for r in rows if r.name == "classifier.0")
    assert fc.macs == 25088 * 4096 and fc.params == 25088 * 4096 + 4096


def test_torchvision_state_dict_names():
    spec = get_model("vgg16_bn").state_spec()
    assert list(spec)[:7] == ["features.0.weight", "features.0.bias", "features.1.weight", "features.1.bias",
                              "features.1.running_mean", "features.1.running_var", "features.1.num_batches_tracked"]
    assert spec["classifier.6.weight"].shape == (1000, 4096)
    alexnet = get_model("alexnet").state_spec()
    assert alexnet["features.0.weight"].shape == (64, 3, 11, 11)
    assert alexnet["classifier.1.weight"].shape == (4096, 9216)
    assert [k for k in alexnet if k.endswith("weight")][-1] == "classifier.6.weight"


@pytest.mark.parametrize("name,size", [("alexnet", (227, 231)), ("alexnet", (63, 63)), ("vgg16", (200, 232)),
                                       ("vgg19", (32, 33)), ("vgg11_bn", (511, 97))])
def test_adaptive_pool_accepts_odd_sizes(name, size):
    assert get_model(name).output_shape((3, *size)) == (1000,)


@pytest.mark.parametrize("name,size", [("alexnet", (62, 62)), ("vgg16", (31, 100))])
def test_too_small_inputs_name_the_layer(name, size):
    with pytest.raises(ShapeError, match=r"layer features\.\d+"):
        get_model(name).shapes((3, *size))


@pytest.mark.parametrize("size", [(28, 28), (36, 36), (32, 33)])
def test_lenet_refuses_other_sizes(size):
    with pytest.raises(ShapeError, match="takes only 1x32x32 input"):
        get_model("lenet5").shapes((1, *size))


def test_wrong_channel_count():
    with pytest.raises(ShapeError, match="expects 3 input channels, got 1"):
        get_model("vgg16").shapes((1, 224, 224))


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(InputError, match="vgg16"):
        get_model("resnet101")


def test_cost_table_has_totals():
    table = format_cost_table(get_model("vgg16"), (3, 224, 224))
    assert "138,357,544" in table and "15,470,264,320" in table and "15.47G MACs" in table


@pytest.mark.parametrize("text,shape", [("3x224x224", (3, 224, 224)), ("224X200", (224, 200))])
def test_parse_shape(text, shape):
    assert parse_shape(text) == shape


@pytest.mark.parametrize("text", ["3x0x4", "abc", "3x-1", ""])
def test_parse_shape_rejects(text):
    with pytest.raises(ShapeError):
        parse_shape(text)


def test_layer_descriptions():
    assert Conv2d(3, 64, 11, stride=4, padding=2).describe() == "conv 11x11/4 3->64 pad 2"
    assert Linear(10, 2).describe() == "fc 10->2"


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMACS))
def test_dag_models_macs_match_published(name):
    macs = sum(row.macs for row in get_model(name).costs((3, 224, 224)))
    assert macs / 1e9 == pytest.approx(PUBLISHED_GMACS[name], abs=0.006)


def test_dag_models_use_torchvision_names():
    spec = get_model("resnet50").state_spec()
    assert spec["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert spec["layer4.2.bn3.running_var"].shape == (2048,)
    assert spec["fc.weight"].shape == (1000, 2048)
    mobilenet = get_model("mobilenet_v2").state_spec()
    assert mobilenet["features.1.conv.0.0.weight"].shape == (32, 1, 3, 3)
    assert mobilenet["features.2.conv.1.0.weight"].shape == (96, 1, 3, 3)
    assert mobilenet["features.18.0.weight"].shape == (1280, 320, 1, 1)
    assert get_model("squeezenet1_1").state_spec()["features.12.expand3x3.weight"].shape == (256, 64, 3, 3)
    assert get_model("googlenet").state_spec()["inception5b.branch4.1.conv.weight"].shape == (128, 832, 1, 1)


def test_residual_block_reads_its_skip():
    network = get_model("resnet18")
    inputs = dict(zip((name for name, _ in network.layers), network.inputs))
    assert inputs["layer1.0.add"] == ("layer1.0.bn2", "maxpool")
    assert inputs["layer2.0.add"] == ("layer2.0.bn2", "layer2.0.downsample.1")
    assert inputs["layer2.0.downsample.0"] == ("layer1.1.relu",)
    assert not network.is_chain and get_model("vgg16").is_chain


def test_cost_table_shows_inputs_and_live_bytes_of_a_dag():
    table = format_cost_table(get_model("resnet18"), (3, 224, 224))
    row = next(line for line in table.splitlines() if line.startswith("layer1.0.add "))
    assert row.endswith("layer1.0.bn2, maxpool")
    # While the first block's add runs, the skip (maxpool), bn2's output and the sum are alive: 3 x 64x56x56.
    assert f"{3 * 64 * 56 * 56 * 4:,}" in row
    assert "peak live activations" in table
    assert "inputs" not in format_cost_table(get_model("vgg11"))
