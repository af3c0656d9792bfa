"""vaeprobe's FID against torch_fidelity.calculate_metrics on the same uint8 images with the same
feature network, and a second vaeprobe call with the reference features cached.

Offline, no pretrained Inception is available, so both sides use vaeprobe's registered stand-in
network (random-convnet-TEST-ONLY), registered in torch-fidelity too: the comparison is of the
pipelines, not of published FID values. With the Inception weights present, pass
--extractor inception-v3-compat to compare on the real network.

    .venv/bin/python -m benchmarks.fidelity_speed [--n 5000] [--n-reference 20000]
        [--device cpu|cuda] [--quick]

On a GPU with the Inception weights present (the issue's comparison):
    python -m benchmarks.fidelity_speed --device cuda --extractor inception-v3-compat \
        --n 10000 --n-reference 50000
"""

import argparse
import os
import sys
import tempfile

import torch

from benchmarks._common import timed


class _TorchFidelityWrapper:
    """Registers vaeprobe's stand-in network as a torch-fidelity feature extractor."""

    @staticmethod
    def register():
        from torch_fidelity import register_feature_extractor
        from torch_fidelity.feature_extractor_base import FeatureExtractorBase

        from vaeprobe.fidelity import RandomConvNet as OurNet

        class RandomConvNet(FeatureExtractorBase):
            def __init__(self, name, features_list, **kwargs):
                super().__init__(name, features_list)
                self.net = OurNet()

            @staticmethod
            def get_provided_features_list():
                return ("64",)

            @staticmethod
            def get_default_feature_layer_for_metric(metric):
                return "64"

            @staticmethod
            def can_be_compiled():
                return False

            def forward(self, x):
                return (self.net(x).double(),)

        register_feature_extractor("random-convnet-TEST-ONLY", RandomConvNet)


def main(argv=None) -> int:
    import torch_fidelity

    import vaeprobe as vp
    from vaeprobe.data import ImageTensorDataset

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=5000, help="generated images")
    parser.add_argument("--n-reference", type=int, default=5000)
    parser.add_argument("--extractor", default="random-convnet-TEST-ONLY")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 300 vs 300 images")
    args = parser.parse_args(argv)
    if args.quick:
        args.n = args.n_reference = 300
    if args.extractor == "random-convnet-TEST-ONLY":
        _TorchFidelityWrapper.register()
    train = vp.data.load("patches32:train").images
    train = torch.cat([train] * -(-(args.n + args.n_reference) // len(train)))  # tiled
    generated = ImageTensorDataset(train[:args.n])
    reference = ImageTensorDataset(train[-args.n_reference:])
    cuda = args.device.startswith("cuda")

    def ours():
        return float(vp.fidelity.fid(generated, reference, feature_extractor=args.extractor,
                                     device=args.device, progress=False)["fid"])

    def theirs():
        layer = "2048" if args.extractor == "inception-v3-compat" else "64"
        return torch_fidelity.calculate_metrics(
            input1=generated, input2=reference, fid=True, cuda=cuda,
            feature_extractor=args.extractor, feature_layer_fid=layer, verbose=False,
            cache=False, save_cpu_ram=True)["frechet_inception_distance"]

    def ours_cold():
        os.environ["VAEPROBE_CACHE"] = tempfile.mkdtemp()  # an empty reference cache
        return ours()

    first, value_ours = timed(ours_cold, repeats=3)
    second, value_cached = timed(ours, repeats=3)  # the cache the last cold call filled
    reference_time, value_theirs = timed(theirs, repeats=2)
    print(f"{args.extractor}, {args.n} generated vs {args.n_reference} reference 3x32x32 images"
          f", device {args.device}, load average "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}")
    same = abs(value_ours - value_theirs) < 1e-6 * max(1, abs(value_theirs))
    print(f"FID vaeprobe {value_ours:.6f} | cached {value_cached:.6f} | torch-fidelity "
          f"{value_theirs:.6f} | same value: {same}")
    print(f"time: vaeprobe (cold cache) {first:.2f} s | torch-fidelity {reference_time:.2f} s | "
          f"overhead {100 * (first / reference_time - 1):+.1f}% | cached reference "
          f"{second:.2f} s ({first / second:.1f}x faster than cold)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
