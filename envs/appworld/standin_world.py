"""Build a stand-in AppWorld world with the package's own APIs (run with the AppWorld venv's python).

    <appworld-venv>/bin/python envs/appworld/standin_world.py --root DIR [--force]

Writes DIR/data in AppWorld's layout: base_dbs/*.db (the real schema, via ModelCollection),
api_docs/standard/*.json (ApiDocCollection), tasks/<id>/{specs.json, dbs/*.jsonl diffs,
ground_truth/*} and datasets/{train,dev,test_normal,test_challenge}.txt. Every task is
validated by the real engine: its solution must pass all tests, a no-op must fail some; the
labels become test_data.json (as AppWorld's TestTracker.prepare_test_data does). The world
is a small stand-in for the official data bundle, which cannot be downloaded here.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

DATETIME = "2023-05-18T12:00:00"
MARKER = "standin_world.json"  # written last: its presence means the build completed


def build(root: Path) -> dict:
    os.environ["APPWORLD_ROOT"] = str(root)
    from appworld import update_root

    update_root(str(root))
    import standin_scenarios as S
    from appworld.apps import get_all_apps
    from appworld.apps.api_lib import set_local_date_and_time
    from appworld.collections.api_docs import ApiDocCollection
    from appworld.common.datetime import DateTime

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    freezer = set_local_date_and_time(DateTime.fromisoformat(DATETIME))
    docs = ApiDocCollection.build(load_apps=tuple(get_all_apps(skip_admin=True)), include_response_schemas=True)
    _save_standard_docs(data, docs)
    _build_base_dbs(data, docs, S)
    task_ids: dict[str, list[str]] = {}
    for gen_id, difficulty, split, setup, solution, evaluation, apps in S.SCENARIOS:
        for k in range(S.TASKS_PER_SCENARIO):
            task_id = f"{gen_id}_{k + 1}"
            _build_task(data, task_id, k, difficulty, setup, solution, evaluation, apps, S)
            task_ids.setdefault(split, []).append(task_id)
    freezer.stop()
    (data / "datasets").mkdir(exist_ok=True)
    for split, ids in task_ids.items():
        (data / "datasets" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    for task_id in [t for ids in task_ids.values() for t in ids]:
        _validate(task_id, data)
    return task_ids


def _save_standard_docs(data: Path, docs) -> None:
    """api_docs/standard/<app>.json as ApiDocCollection.save writes it (the other formats need extra packages)."""
    from appworld.common.constants import CANARY_STRING

    (data / "api_docs" / "standard").mkdir(parents=True, exist_ok=True)
    for app_name, api_name_to_docs in docs.items():
        out = {name: {**doc, "canary_string": CANARY_STRING} for name, doc in api_name_to_docs.items()}
        (data / "api_docs" / "standard" / f"{app_name}.json").write_text(json.dumps(out, indent=2))


def _build_base_dbs(data: Path, docs, S) -> None:
    from appworld.apps import get_all_apps
    from appworld.collections.models import ModelCollection

    mc = ModelCollection.load(
        to_db_home_path=":memory:standin-base",
        from_db_home_path=":memory:standin-base",
        load_apps=get_all_apps(),
        create_db=True,
    )
    for app_name, api_docs in docs.items():
        for doc in api_docs.values():
            mc.api_docs.ApiDoc.create_save(
                app_name_=app_name,
                api_name=doc["api_name"],
                path=doc["path"],
                method=doc["method"],
                description=doc["description"],
                parameters=doc["parameters"],
                response_schemas=doc["response_schemas"],
            )
    for i, (first, last, email, phone, birthday, sex) in enumerate(S.PEOPLE):
        user = mc.admin.MainUser.create_save(
            first_name=first, last_name=last, email=email, phone_number=phone, birthday=birthday, sex=sex
        )
        names = dict(first_name=first, last_name=last, email=email, verified=True)
        for app in S.APPS:
            mc.admin.AccountPassword.create_save(main_user_id=user.id, account_name=app, password=S.password(i, app))
        note_user = mc.simple_note.User.create_save(password=S.password(i, "simple_note"), **names)
        for title, content, tags in S.base_notes(i):
            mc.simple_note.Note.create_save(user_id=note_user.id, title=title, content=content, tags=tags)
        mc.venmo.User.create_save(password=S.password(i, "venmo"), venmo_balance=100.0 + 37.5 * i, **names)
        todo_user = mc.todoist.User.create_save(password=S.password(i, "todoist"), **names)
        mc.todoist.Project.create_save(user_id=todo_user.id, name="Inbox", is_inbox=True)
    base = data / "base_dbs"
    shutil.rmtree(base, ignore_errors=True)
    mc.save(db_home_path=str(base), format="full", delete_if_exists=True, save_model_hashes=True)
    mc.close()


def _build_task(data: Path, task_id: str, k: int, difficulty: int, setup, solution, evaluation, apps, S) -> None:
    from appworld.apps import get_all_apps
    from appworld.collections.models import ModelCollection
    from appworld.common.constants import CANARY_STRING, DB_VERSION
    from appworld.common.datetime import DateTime
    from appworld.ground_truth import inject_canary
    from appworld.task import Task
    from munch import Munch

    first, last, email, phone, birthday, sex = S.PEOPLE[k]
    sup = Munch(first_name=first, last_name=last, email=email, phone_number=phone)
    mc = ModelCollection.load(
        from_db_home_path=str(data / "base_dbs"), to_db_home_path=f":memory:standin-{task_id}", load_apps=get_all_apps()
    )
    instruction, private, answer = setup(mc, sup, k)
    s = mc.supervisor.Supervisor.create_save(birthday=birthday, sex=sex, **sup)
    for app in S.APPS:
        mc.supervisor.AccountPassword.create_save(supervisor_id=s.id, account_name=app, password=S.password(k, app))
    mc.supervisor.Task.create_save(supervisor_id=s.id, instruction=instruction)
    task = Task(
        id=task_id,
        instruction=instruction,
        supervisor=sup,
        datetime=DateTime.fromisoformat(DATETIME),
        allowed_apps=get_all_apps(skip_admin=True),
        db_version=DB_VERSION,
        model_collection=mc,
    )
    task_dir = data / "tasks" / task_id
    shutil.rmtree(task_dir, ignore_errors=True)
    task.save(save_ground_truth=False, model_collection_format="changes")
    task.close()
    gt = task_dir / "ground_truth"
    gt.mkdir(parents=True)
    code = solution(private)
    files = {
        "metadata.json": {
            "difficulty": difficulty,
            "mode": "full",
            "num_apps": len(apps),
            "num_solution_code_lines": len(code.splitlines()),
            "standin": True,
        },
        "required_apps.json": apps,
        "public_data.json": {},
        "private_data.json": private,
        "test_data.json": None,
        "api_calls.json": [],
    }
    for name, value in files.items():
        (gt / name).write_text(json.dumps(value, indent=2))
    (gt / "answer.json").write_text(json.dumps(answer))
    (gt / "evaluation.py").write_text(inject_canary(evaluation.replace("__IGNORED__", repr(S.IGNORED_MODELS))))
    body = "\n".join("    " + line for line in code.splitlines())
    (gt / "solution.py").write_text(inject_canary(f"def solution(apis, requester):\n{body}\n"))
    (gt / "compiled_solution.py").write_text(inject_canary(f"def solution(apis, requester):\n{body}\n"))
    (gt / "solution_code.txt").write_text(code)  # plain REPL code (stand-in extra, read by tests)
    assert CANARY_STRING


def _validate(task_id: str, data: Path) -> None:
    """No-op must fail some test, the solution must pass all; record labelled test_data."""
    from appworld import AppWorld
    from appworld.evaluator import TestTracker

    gt = data / "tasks" / task_id / "ground_truth"
    code = (gt / "solution_code.txt").read_text()
    with AppWorld(task_id=task_id, experiment_name="standin-validation", timeout_seconds=30) as world:
        noop = world.evaluate(suppress_errors=True)
        output = world.execute(code)
        solved = world.evaluate(suppress_errors=True)
    if not solved.success:
        raise RuntimeError(
            f"stand-in task {task_id}: the reference solution fails its own tests.\n"
            f"REPL output: {output}\nfailures: {solved.failures}"
        )
    if noop.success:
        raise RuntimeError(f"stand-in task {task_id}: doing nothing passes every test; the evaluation is too weak")
    test_data = TestTracker.prepare_test_data([dict(p) for p in solved.passes], [dict(p) for p in noop.passes])
    (gt / "test_data.json").write_text(json.dumps(test_data, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="APPWORLD_ROOT to create (the world goes to ROOT/data)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a finished build is there")
    args = parser.parse_args(argv)
    root = Path(args.root).resolve()
    if (root / "data" / MARKER).is_file() and not args.force:
        print(f"stand-in AppWorld world already built at {root / 'data'} (use --force to rebuild)")
        return 0
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    t0 = time.time()
    shutil.rmtree(root / "data", ignore_errors=True)
    shutil.rmtree(root / "experiments" / "outputs" / "standin-validation", ignore_errors=True)
    splits = build(root)
    info = {
        "standin": True,
        "note": "stand-in world, not the official AppWorld data; never report as AppWorld scores",
        "splits": splits,
        "build_seconds": round(time.time() - t0, 1),
    }
    (root / "data" / MARKER).write_text(json.dumps(info, indent=2))
    print(
        f"stand-in AppWorld world: {sum(map(len, splits.values()))} tasks "
        f"({', '.join(f'{k}: {len(v)}' for k, v in splits.items())}) at {root / 'data'} in {info['build_seconds']} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
