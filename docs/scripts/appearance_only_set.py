"""The built-in set with its scanners reduced to appearance (docs/experiments.md, "Scanners that differ in
appearance only").

A control for the z^c probe and the structure bar, not a data set of the package: the built-in set's anatomies
(the quick profile's counts and seed 0, so the very anatomies of the default run), rendered by four **simulated**
scanners that keep each built-in scanner's contrast curve and coil bias field but share one resolution, one noise
range and no artefact. What tells these scanners apart is then what the attribute code and G's field and tone
curve model; the detail inside the head (sharpness, noise, ghost, ringing) no longer names them.

    python docs/scripts/appearance_only_set.py OUT_DIR [--no-field]
    make run DATA=OUT_DIR/volumes.csv RUN=appearance

``--no-field`` also gives every scanner sim-A's bias field (strength and shape): the contrast curve alone.
"""
import argparse
from dataclasses import replace

from nbutils import config, phantom

SHARED = dict(resolution="shared: 0.5 mm Gaussian blur", blur_mm=(0.5, 0.5), downsample=1,
              noise=(0.015, 0.025), artefact="none", artefact_strength=(0.0, 0.0))


def scanners(field: bool = True) -> tuple[phantom.SimScanner, ...]:
    """The built-in scanners with only their contrast curve (and, with ``field``, their bias field) kept."""
    a = phantom.SCANNERS[0]
    keep_field = lambda s: {} if field else dict(bias=a.bias, bias_strength=a.bias_strength)
    return tuple(replace(s, name=f"{s.name}-app", **SHARED, **keep_field(s)) for s in phantom.SCANNERS)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--no-field", action="store_true", help="every scanner gets sim-A's bias field")
    args = ap.parse_args(argv)
    p = config.PROFILES["quick"]
    csv = phantom.build(args.out_dir, n_train=p.sim_train_subjects, n_test=p.sim_test_subjects, slab=p.sim_slab,
                        n_paired=p.sim_paired_subjects, seed=0, scanners=scanners(not args.no_field))
    print(csv)


if __name__ == "__main__":
    main()
