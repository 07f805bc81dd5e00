"""Which training of its target each group benched.

A target trained again (on a fresh machine, say) need not come out the same, and a dataset's seeds pooled over
two trainings of its target measure the drafts on two targets. Groups record their target's weights
(:func:`~modeling_padrec.target.weights_digest`, ``group.json``'s ``target.weights``); for groups that did not,
the greedy ``ar-jf`` run is the fingerprint: one target, greedy and constrained, makes the same lists, hence the
same number of target forwards for each user, so a group whose counts match another's on every user they share is
taken to have benched that group's target (two trainings whose lists cost the same forwards for every one of 200
users would be taken for one). Two groups are put together when their weights are equal, or, where one of them
did not record them, when their greedy counts match; a sampled group that recorded nothing stays on its own,
unidentified.
"""

from __future__ import annotations

FINGERPRINT_METHOD = "ar-jf"  # the engine's own greedy run: no draft, so the same in every group


def _weights(result) -> str | None:
    return (result.summary.get("target") or {}).get("weights")


def _forwards(result) -> dict[str, int] | None:
    """The group's greedy per-user target forwards, or None for a sampled group."""
    if result.group.temperature:
        return None
    return {user: r["target_forwards"] for user, r in result.requests.get(FINGERPRINT_METHOD, {}).items()}


def _same(a: dict[str, int] | None, b: dict[str, int] | None) -> bool:
    shared = set(a or ()) & set(b or ())
    return bool(shared) and all(a[u] == b[u] for u in shared)


def target_instances(results: list) -> dict[str, list[dict]]:
    """``"<dataset>/<target>"`` -> the trainings of that target the groups benched, each ``{"weights": digest
    or None, "identified": bool, "groups": [names], "seeds": [seeds]}``, in the order the groups sort; the
    sampled groups that recorded no weights are one entry with ``identified`` false."""
    found: dict[str, list[dict]] = {}
    for result in sorted(results, key=lambda r: r.group.name):
        weights, forwards = _weights(result), _forwards(result)
        instances = found.setdefault(f"{result.group.dataset}/{result.group.target}", [])
        identified = bool(weights) or forwards is not None
        for inst in instances:
            if not identified or not inst["identified"]:
                match = identified == inst["identified"]
            elif weights and inst["weights"]:
                match = weights == inst["weights"]
            else:
                match = any(_same(forwards, other) for other in inst["_forwards"])
            if match:
                break
        else:
            inst = {"weights": None, "identified": identified, "groups": [], "seeds": set(), "_forwards": []}
            instances.append(inst)
        inst["weights"] = inst["weights"] or weights
        inst["groups"].append(result.group.name)
        inst["seeds"].add(result.group.seed)
        if forwards:
            inst["_forwards"].append(forwards)
    kept = ("weights", "identified", "groups")
    return {
        key: [{**{k: i[k] for k in kept}, "seeds": sorted(i["seeds"])} for i in instances]
        for key, instances in sorted(found.items())
    }


def pooled_over_trainings(instances: dict[str, list[dict]]) -> list[str]:
    """A line for every dataset whose groups benched more than one training of its target."""
    lines = []
    for key, everything in instances.items():
        found = [i for i in everything if i["identified"]]
        if len(found) > 1:
            seeds = "; ".join(f"seed(s) {', '.join(map(str, i['seeds']))} on {_name(i)}" for i in found)
            lines.append(
                f"{key}: the groups benched {len(found)} trainings of the target ({seeds}); a cell's interval "
                "pools its seeds over them, so it holds the target's training as well as the draft's"
            )
    return lines


def _name(instance: dict) -> str:
    if not instance["identified"]:
        return "not identified (sampled, weights not recorded)"
    return f"weights {instance['weights']}" if instance["weights"] else "an unrecorded training"


def instances_markdown(instances: dict[str, list[dict]]) -> list[str]:
    lines = [
        "## The targets benched",
        "",
        "Which training of its target each group benched (`modeling_padrec/study/instances.py`): by the target's "
        "weights where the group recorded them; otherwise, for greedy groups, by their `ar-jf` target forwards, "
        "user by user.",
        "",
    ]
    for key, found in instances.items():
        for inst in found:
            lines.append(
                f"- {key}, {_name(inst)}: {len(inst['groups'])} group(s): {', '.join(inst['groups'])}"
            )
    return lines
