"""The conversation format every stage shares: LLaVA turns ``{"from": speaker, "value": text}`` whose
text holds one ``<image>`` placeholder per image, in image order.

Curation writes and checks it (``curation/record.py``), the loader renders it through the chat
template (``data/chat_template.py``), evaluation and export prompt with it. No torch here, so
curation imports it without pulling in the loader.

| speaker (``from``) | chat-template role |
|--------------------|--------------------|
| ``system``         | ``system``         |
| ``human``          | ``user``           |
| ``gpt``            | ``assistant``      |

Curated records use these speakers only; the chat template also takes the role names themselves
(``user``, ``assistant``), as Hugging Face messages write them.
"""

IMAGE_PLACEHOLDER = "<image>"
SPEAKER_ROLES = {"system": "system", "human": "user", "gpt": "assistant"}
SPEAKERS = tuple(SPEAKER_ROLES)  # ("system", "human", "gpt")
