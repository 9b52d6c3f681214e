"""One flag per concept: every verb where a concept applies spells it the same way (the README's verbs x
options table), and no verb offers a flag for a concept it ignores."""

from __future__ import annotations

import click
import pytest

from medsamkit.cli import main

# concept flags -> the verbs that must have them (and no other verb may)
TABLE = {
    "--model": {"fit-clicks", "segment", "evaluate", "embed", "finetune", "samaug masks", "samaug priors", "segment-volume",
                "evaluate-volume", "export", "demo", "annotate"},
    "--device": {"fit-clicks", "segment", "evaluate", "embed", "finetune", "samaug masks", "samaug priors", "segment-volume",
                 "evaluate-volume", "demo", "unet train", "unet eval", "annotate"},
    "--prompts": {"evaluate", "finetune", "segment-volume", "evaluate-volume"},
    # label values to process (one meaning on every verb)
    "--classes": {"evaluate", "finetune", "segment-volume", "evaluate-volume"},
    # the class names a person assigns while annotating
    "--class-names": {"annotate"},
    "--window": {"fit-clicks", "evaluate", "embed", "finetune", "samaug masks", "samaug priors", "segment-volume",
                 "evaluate-volume", "annotate"},
    "--max-images": {"fit-clicks", "evaluate", "embed", "finetune", "samaug masks", "samaug priors", "evaluate-volume",
                     "segment-volume", "unet eval"},
    "--tile": {"fit-clicks", "evaluate", "embed", "finetune", "samaug masks", "samaug priors"},
    "--tile-overlap": {"fit-clicks", "evaluate", "embed", "finetune", "samaug masks", "samaug priors"},
    "--cache": {"evaluate", "finetune", "segment-volume", "evaluate-volume"},
    "--save-masks": {"evaluate", "evaluate-volume"},
    "--multimask": {"segment", "evaluate"},
    # which of the model's outputs answers a box alone (prompts.boxes)
    "--box-output": {"segment", "evaluate", "annotate"},
    # how clicks become masks (prompts.clicks): auto / native / search / mixed
    "--clicks": {"segment", "evaluate", "annotate", "evaluate-volume"},
    # the click search's ranking fitted by `fit-clicks`
    "--click-ranker": {"segment", "evaluate", "annotate", "evaluate-volume"},
    # an interactive evaluation protocol named by its source (the CVPR 2025 challenge)
    "--protocol": {"evaluate-volume"},
    # a 3D box prompt: z-range + a 2D box on one slice
    "--box3d": {"segment-volume"},
    "--workers": {"evaluate", "embed", "samaug masks", "samaug priors", "evaluate-volume", "segment-volume"},
    "--scheduler": {"evaluate", "embed", "samaug masks", "samaug priors", "evaluate-volume", "segment-volume"},
    "--class-head": {"finetune"},
    "--learn": {"annotate"},
    "--learn-min-objects": {"annotate"},
    "--learn-budget": {"annotate"},
    "--monailabel": {"annotate"},
    "--fusion": {"unet train"},
}


def _verbs(group: click.Group, prefix: str = ""):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _verbs(cmd, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", cmd


VERBS = dict(_verbs(main))


def _flags(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params if not getattr(p, "hidden", False) for o in p.opts if o.startswith("--")}


@pytest.mark.parametrize("flag", sorted(TABLE))
def test_a_concept_has_one_flag_on_exactly_the_verbs_it_applies_to(flag):
    have = {name for name, cmd in VERBS.items() if flag in _flags(cmd)}
    assert have == TABLE[flag]


def test_every_verb_in_the_table_exists():
    assert set().union(*TABLE.values()) <= set(VERBS)
