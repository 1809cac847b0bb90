"""Stand-in AppWorld scenarios: people, base records, and 6 task scenarios (3 tasks each).

Runs inside the AppWorld virtualenv only (imported by standin_world.py). A scenario is a
generator id (7 hex chars, as in AppWorld), a difficulty, a split, and three functions:
``setup(models, sup, k) -> (instruction, private_data, answer)`` adds task-specific records,
``solution(private_data) -> code`` is a correct REPL solution, ``EVALUATION`` is the
evaluation.py source judged by AppWorld's own evaluator. These are NOT AppWorld's tasks.
"""

from __future__ import annotations

APPS = ("simple_note", "venmo", "todoist")
PEOPLE = [  # (first, last, email, phone, birthday, sex)
    ("Maya", "Ortiz", "maya.ortiz@gmail.com", "5550100001", "1990-03-14", "female"),
    ("Liam", "Chen", "liam.chen@gmail.com", "5550100002", "1987-07-02", "male"),
    ("Nora", "Patel", "nora.patel@gmail.com", "5550100003", "1995-11-23", "female"),
    ("Omar", "Haddad", "omar.haddad@gmail.com", "5550100004", "1992-01-30", "male"),
    ("Ivy", "Brooks", "ivy.brooks@gmail.com", "5550100005", "1989-09-09", "female"),
    ("Theo", "Nakamura", "theo.nakamura@gmail.com", "5550100006", "1993-05-05", "male"),
]
NOTE_TAGS = ("work", "recipes", "travel", "ideas")
IGNORED_MODELS = ["simple_note.User", "venmo.User", "todoist.User"]  # login touches last_logged_in


def password(person_index: int, app: str) -> str:
    return f"{app[:4]}-{person_index}-Qx9!pw"


def base_notes(person_index: int) -> list[tuple[str, str, list[str]]]:
    """Deterministic notes per person: (title, content, tags)."""
    notes = []
    for j in range(4 + person_index):
        tag = NOTE_TAGS[(j * (person_index + 1)) % len(NOTE_TAGS)]
        notes.append((f"{tag.title()} note {j + 1}", f"Some {tag} thoughts, part {j + 1}.", [tag]))
    return notes


def _answer_code(answer: str = "None") -> str:
    return f"apis.supervisor.complete_task(answer={answer})"


LOGIN = """profile = apis.supervisor.show_profile()
passwords = {{p["account_name"]: p["password"] for p in apis.supervisor.show_account_passwords()}}
{app}_token = apis.{app}.login(username=profile["email"], password=passwords["{app}"])["access_token"]
"""

_EVAL_HEAD = """import json


def _answer(models):
    task = models.end.supervisor.Task.all()[0]
    try:
        return json.loads(task.answer)
    except (TypeError, ValueError):
        return task.answer


def evaluate(test, public_data, private_data, main_user, models, ground_truth_answer):
    ignored = __IGNORED__
"""


# ----------------------------------------------------------------------------- 1. create a note
def create_note_setup(models, sup, k):
    title, content = (
        ["Packing list", "Book club picks", "Quarterly goals"][k],
        ["passport, charger", "Dune; Emma", "ship v2"][k],
    )
    tag = NOTE_TAGS[k]
    instruction = f'Create a note in Simple Note titled "{title}" with the content "{content}" and the tag "{tag}".'
    return instruction, {"title": title, "content": content, "tag": tag}, None


def create_note_solution(d):
    return LOGIN.format(app="simple_note") + (
        f"apis.simple_note.create_note(access_token=simple_note_token, title={d['title']!r}, "
        f"content={d['content']!r}, tags=[{d['tag']!r}])\n" + _answer_code()
    )


CREATE_NOTE_EVAL = (
    _EVAL_HEAD
    + """
    with test("exactly one simple_note.Note was added and none updated or removed"):
        added, updated, removed = models.changed_records("simple_note.Note")
        test.case(len(added), "==", 1)
        test.case(len(updated) + len(removed), "==", 0)
    with test("the new note belongs to the supervisor and has the requested title, content and tag"):
        note = added[0]
        user = models.end.simple_note.User.find_one(email=main_user.email)
        test.case(note.user_id, "==", user.id)
        test.case(note.title, "==", private_data.title)
        test.case(note.content.strip(), "==", private_data.content)
        test.case([t.lower() for t in note.tags], "==", [private_data.tag])
    with test("no other app data was changed"):
        test.case(models.changed_model_names(ignore=ignored), "==", {"simple_note.Note"})
    with test("the task was marked complete with no answer"):
        test.answer(_answer(models), ground_truth_answer)
"""
)


# ----------------------------------------------------------------------------- 2. count notes by tag
def count_notes_setup(models, sup, k):
    tag = NOTE_TAGS[(k + 1) % len(NOTE_TAGS)]
    user = models.simple_note.User.find_one(email=sup.email)
    count = sum(1 for n in models.simple_note.Note.find_all(user_id=user.id) if tag in n.tags)
    instruction = f'How many of my notes in Simple Note are tagged "{tag}"?'
    return instruction, {"tag": tag}, count


def count_notes_solution(d):
    return (
        LOGIN.format(app="simple_note")
        + f"""count, page = 0, 0
while True:
    notes = apis.simple_note.search_notes(access_token=simple_note_token, tags=[{d["tag"]!r}], page_index=page, page_limit=20)
    if not notes:
        break
    count += len(notes)
    page += 1
"""
        + _answer_code("count")
    )


COUNT_NOTES_EVAL = (
    _EVAL_HEAD
    + """
    with test("the answer is the number of notes with the tag"):
        test.answer(_answer(models), ground_truth_answer)
    with test("no app data was changed"):
        test.case(models.changed_model_names(ignore=ignored), "==", set())
"""
)


# ----------------------------------------------------------------------------- 3. send money on venmo
def send_money_setup(models, sup, k):
    friend = PEOPLE[3 + k]
    amount, note = [12.5, 40.0, 7.25][k], ["lunch", "concert tickets", "coffee"][k]
    instruction = (
        f"Send ${amount:.2f} to {friend[0]} {friend[1]} ({friend[2]}) on Venmo "
        f'with the note "{note}", paid from my Venmo balance.'
    )
    return instruction, {"email": friend[2], "amount": amount, "note": note}, None


def send_money_solution(d):
    return LOGIN.format(app="venmo") + (
        f"apis.venmo.create_transaction(access_token=venmo_token, receiver_email={d['email']!r}, "
        f"amount={d['amount']!r}, description={d['note']!r})\n" + _answer_code()
    )


SEND_MONEY_EVAL = (
    _EVAL_HEAD
    + """
    with test("exactly one venmo.Transaction was added"):
        added, updated, removed = models.changed_records("venmo.Transaction")
        test.case(len(added), "==", 1)
        test.case(len(updated) + len(removed), "==", 0)
    with test("the transaction goes from the supervisor to the right person"):
        t = added[0]
        sender = models.end.venmo.User.find_one(email=main_user.email)
        receiver = models.end.venmo.User.find_one(email=private_data.email)
        test.case(t.sender_id, "==", sender.id)
        test.case(t.receiver_id, "==", receiver.id)
    with test("the amount and note are as requested"):
        test.case(round(t.amount, 2), "==", private_data.amount)
        test.case(t.description.strip().lower(), "==", private_data.note)
    with test("the task was marked complete with no answer"):
        test.answer(_answer(models), ground_truth_answer)
"""
)


# ----------------------------------------------------------------------------- 4. venmo balance
def balance_setup(models, sup, k):
    user = models.venmo.User.find_one(email=sup.email)
    return "What is my current Venmo balance in dollars?", {}, round(user.venmo_balance, 2)


def balance_solution(d):
    return LOGIN.format(app="venmo") + (
        'balance = apis.venmo.show_venmo_balance(access_token=venmo_token)["venmo_balance"]\n' + _answer_code("balance")
    )


BALANCE_EVAL = (
    _EVAL_HEAD
    + """
    with test("the answer is the venmo balance"):
        test.answer(_answer(models), ground_truth_answer)
    with test("no app data was changed"):
        test.case(models.changed_model_names(ignore=ignored), "==", set())
"""
)


# ----------------------------------------------------------------------------- 5. todoist project
def project_setup(models, sup, k):
    name, color = ["Home renovation", "Marathon training", "Garden"][k], ["blue", "red", "green"][k]
    instruction = f'Create a new project in Todoist named "{name}" with the color {color}.'
    return instruction, {"name": name, "color": color}, None


def project_solution(d):
    return LOGIN.format(app="todoist") + (
        f"apis.todoist.create_project(access_token=todoist_token, name={d['name']!r}, color={d['color']!r})\n"
        + _answer_code()
    )


PROJECT_EVAL = (
    _EVAL_HEAD
    + """
    with test("exactly one todoist.Project was added for the supervisor"):
        added, updated, removed = models.changed_records("todoist.Project")
        test.case(len(added), "==", 1)
        user = models.end.todoist.User.find_one(email=main_user.email)
        test.case(added[0].user_id, "==", user.id)
    with test("the project has the requested name and color"):
        test.case(added[0].name, "==", private_data.name)
        test.case(added[0].color, "==", private_data.color)
    with test("the task was marked complete with no answer"):
        test.answer(_answer(models), ground_truth_answer)
"""
)


# ----------------------------------------------------------------------------- 6. note -> venmo (2 apps)
def pay_debt_setup(models, sup, k):
    friend = PEOPLE[3 + (k + 1) % 3]
    amount = [18.0, 33.5, 9.75][k]
    user = models.simple_note.User.find_one(email=sup.email)
    title = f"IOU {friend[0]}"
    models.simple_note.Note.create_save(
        user_id=user.id,
        title=title,
        tags=["money"],
        content=f"I owe {friend[0]} {friend[1]} ${amount:.2f} ({friend[2]}).",
    )
    instruction = (
        f'My Simple Note note titled "{title}" says how much I owe and to whom. '
        'Pay that amount on Venmo from my Venmo balance with the note "settled".'
    )
    return instruction, {"email": friend[2], "amount": amount, "note": "settled", "title": title}, None


def pay_debt_solution(d):
    return (
        LOGIN.format(app="simple_note")
        + LOGIN.format(app="venmo").split("\n", 2)[2]
        + f"""import re
hits = apis.simple_note.search_notes(access_token=simple_note_token, query={d["title"]!r})
note = apis.simple_note.show_note(access_token=simple_note_token, note_id=hits[0]["note_id"])
amount = float(re.search(r"\\$([0-9.]+)", note["content"]).group(1))
email = re.search(r"\\(([^)]+@[^)]+)\\)", note["content"]).group(1)
apis.venmo.create_transaction(access_token=venmo_token, receiver_email=email, amount=amount, description="settled")
"""
        + _answer_code()
    )


SCENARIOS = [  # (generator id, difficulty, split, setup, solution, evaluation, required apps)
    ("a1c3e5f", 1, "train", create_note_setup, create_note_solution, CREATE_NOTE_EVAL, ["simple_note"]),
    ("b2d4f6a", 2, "train", send_money_setup, send_money_solution, SEND_MONEY_EVAL, ["venmo"]),
    ("c3e5a7b", 1, "train", balance_setup, balance_solution, BALANCE_EVAL, ["venmo"]),
    ("d4f6b8c", 1, "dev", count_notes_setup, count_notes_solution, COUNT_NOTES_EVAL, ["simple_note"]),
    ("e5a7c9d", 1, "test_normal", project_setup, project_solution, PROJECT_EVAL, ["todoist"]),
    ("f6b8d0e", 3, "test_challenge", pay_debt_setup, pay_debt_solution, SEND_MONEY_EVAL, ["simple_note", "venmo"]),
]
TASKS_PER_SCENARIO = 3
