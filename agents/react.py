"""ReAct/REPL agent: the model thinks in prose and acts with ```python blocks run in the env's REPL.

``parse_action`` joins every python block of a message (in order); an unterminated trailing
```python block counts (generation often stops mid-block at the token budget). A message
without code gives "" and the environment answers that with an error observation.
"""

from __future__ import annotations

import re

from .chat import ChatAgent

_BLOCK = re.compile(r"```(?:python|py)[^\S\n]*\n(.*?)(?:```|\Z)", re.S | re.I)

# One worked example episode, written for this project (not from AppWorld's prompts).
EXAMPLE_EPISODE = """Example episode (a different task, for illustration only).

Task: How many playlists do I have in Spotify?

Thought: I need my Spotify password, then log in. Let me list the supervisor's passwords.
```python
passwords = {p["account_name"]: p["password"] for p in apis.supervisor.show_account_passwords()}
print(list(passwords))
```
Output: ["spotify", "venmo"]

Thought: I do not know the Spotify API names yet. Let me look them up.
```python
print(apis.api_docs.show_api_descriptions(app_name="spotify"))
```
Output: [{"name": "login", ...}, {"name": "show_playlist_library", ...}, ...]

Thought: Log in with my email and page through the playlist library.
```python
profile = apis.supervisor.show_profile()
token = apis.spotify.login(username=profile["email"], password=passwords["spotify"])["access_token"]
count, page = 0, 0
while True:
    batch = apis.spotify.show_playlist_library(access_token=token, page_index=page)
    if not batch:
        break
    count += len(batch)
    page += 1
print(count)
```
Output: 7

Thought: The answer is 7. I mark the task complete with it.
```python
apis.supervisor.complete_task(answer=7)
```
Output: Execution successful."""

SYSTEM_PROMPT = f"""You are an agent that completes tasks for your supervisor by writing Python code.
Your code runs in a stateful Python REPL (variables persist between turns) with an `apis` object:
call `apis.<app>.<api>(**kwargs)` for the apps (supervisor, api_docs, simple_note, venmo, todoist,
spotify, ...). Use `apis.api_docs.show_api_descriptions(app_name=...)` and
`apis.api_docs.show_api_doc(app_name=..., api_name=...)` to learn the APIs, and
`apis.supervisor.show_account_passwords()` for credentials. Each turn: a short thought, then one
```python block. Print what you need to see; the printed output comes back to you. When done, call
`apis.supervisor.complete_task()` (with `answer=...` if the task asks a question).

{EXAMPLE_EPISODE}"""


def extract_code(text: str) -> str:
    """All ```python blocks of `text`, joined by blank lines; "" when there is none."""
    blocks = [b.strip("\n") for b in _BLOCK.findall(text)]
    return "\n\n".join(b for b in blocks if b.strip())


class ReactAgent(ChatAgent):
    """ChatAgent whose action is the python code of the message; default system prompt above."""

    def __init__(self, tokenizer, system_prompt: str | None = None):
        super().__init__(tokenizer, system_prompt=SYSTEM_PROMPT if system_prompt is None else system_prompt)

    def parse_action(self, text: str) -> str:
        return extract_code(text)
