"""The built-in set with its scanners reduced to appearance (docs/experiments.md, "Scanners that differ in
appearance only").

A control for the z^c probe and the structure bar, not a data set of the package: the built-in set's anatomies
(the quick profile's counts and seed 0, so the very anatomies of the default run), rendered by four **simulated**
scanners that keep each built-in scanner's contrast curve and coil bias field but share one resolution, one noise
range and no artefact. What tells these scanners apart is then only what the attribute code and G's field and tone
curve model: their detail inside the head still differs (a contrast curve sets the contrast between neighbouring
tissues), but no longer in sharpness, noise level, ghost or ringing.

    python docs/scripts/appearance_only_set.py OUT_DIR [--noise-free]
    make run DATA=OUT_DIR/volumes.csv RUN=appearance

``--noise-free`` renders without noise: a scanner's lower tissue contrast then no longer means a noisier image once
its contrast curve is undone.
"""
import argparse
from dataclasses import replace

from nbutils import config, phantom

SHARED = dict(resolution="shared: 0.5 mm Gaussian blur", blur_mm=(0.5, 0.5), downsample=1,
              noise=(0.015, 0.025), artefact="none", artefact_strength=(0.0, 0.0))


def scanners(noise: bool = True) -> tuple[phantom.SimScanner, ...]:
    """The built-in scanners with only their contrast curve and bias field kept; without ``noise``, noise-free."""
    shared = SHARED | ({} if noise else dict(noise=(0.0, 0.0)))
    return tuple(replace(s, name=f"{s.name}-app", **shared) for s in phantom.SCANNERS)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--noise-free", action="store_true", help="no noise")
    args = ap.parse_args(argv)
    csv = phantom.build_for_profile(args.out_dir, config.PROFILES["quick"], seed=0,
                                    scanners=scanners(not args.noise_free))
    print(csv)


if __name__ == "__main__":
    main()
