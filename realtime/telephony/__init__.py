"""Phone calls over carrier media streams, one module per carrier over shared call code (calls.py):
Twilio Media Streams, Telnyx media streaming, Vonage WebSocket audio (WebSockets on the server's
port) and Asterisk AudioSocket (its own TCP port)."""
from realtime.telephony.twilio import MARK_GRACE_S, TwilioAudioOutput, TwilioCall, twilio_ws

__all__ = ["MARK_GRACE_S", "TwilioAudioOutput", "TwilioCall", "twilio_ws"]
