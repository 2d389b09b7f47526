"""Step-Audio's real-time controller states and the one table of transitions.

    Silence ──speech──▶ UserSpeaking ──pause──▶ UserPaused ──end_of_turn──▶ BotReplying ──reply_done──▶ Silence
                             ▲                     │                            │
                             └──────speech─────────┘ (speculation discarded)    │
                             └──────────────────────barge_in────────────────────┘

Speech during BotReplying that is too short (a backchannel, a cough) is not a barge-in. Speech
that starts before any of the reply was heard takes the end of turn back (take_back): the user
had only paused, and the turn goes on as if the reply had never been started.
"""
from __future__ import annotations

from enum import Enum


class State(str, Enum):
    SILENCE = "silence"
    USER_SPEAKING = "user_speaking"
    USER_PAUSED = "user_paused"
    BOT_REPLYING = "bot_replying"


class Signal(str, Enum):
    SPEECH = "speech"  # VAD onset (or resumed speech)
    PAUSE = "pause"  # short silence
    END_OF_TURN = "end_of_turn"  # long silence, or the client committed the input
    BARGE_IN = "barge_in"  # long enough speech while the bot talks
    REPLY_DONE = "reply_done"  # the reply finished playing, or was cancelled
    COMMIT = "commit"  # end of turn when the client answers itself (create_response: false)
    TAKE_BACK = "take_back"  # the user went on before hearing any of the reply: the turn resumes


S, G = State, Signal

# (state, signal) -> next state. Signals not listed for a state are ignored in it.
TRANSITIONS: dict[tuple[State, Signal], State] = {
    (S.SILENCE, G.SPEECH): S.USER_SPEAKING,
    (S.SILENCE, G.END_OF_TURN): S.BOT_REPLYING,  # manual commit / response.create
    (S.USER_SPEAKING, G.PAUSE): S.USER_PAUSED,
    (S.USER_SPEAKING, G.END_OF_TURN): S.BOT_REPLYING,  # manual commit, or max turn length
    (S.USER_PAUSED, G.SPEECH): S.USER_SPEAKING,
    (S.USER_PAUSED, G.END_OF_TURN): S.BOT_REPLYING,
    (S.USER_PAUSED, G.COMMIT): S.SILENCE,
    (S.USER_SPEAKING, G.COMMIT): S.SILENCE,
    (S.BOT_REPLYING, G.BARGE_IN): S.USER_SPEAKING,
    (S.BOT_REPLYING, G.TAKE_BACK): S.USER_SPEAKING,
    (S.BOT_REPLYING, G.REPLY_DONE): S.SILENCE,
    (S.BOT_REPLYING, G.END_OF_TURN): S.BOT_REPLYING,  # a new reply replaces the current one
}


def next_state(state: State, signal: Signal) -> State | None:
    return TRANSITIONS.get((state, signal))
