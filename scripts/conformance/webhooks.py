#!/usr/bin/env python3
"""Conformance checks of sidecache's voice-platform webhooks against the platforms' official SDKs.

    python3 scripts/conformance/webhooks.py http://127.0.0.1:PORT   # against `sidecache serve --demo`
    python3 scripts/conformance/webhooks.py --self-test             # offline: signers + sample bodies

Env (live mode): ELEVENLABS_SECRET, VAPI_SECRET, RETELL_API_KEY, TWILIO_AUTH_TOKEN, TWILIO_PUBLIC_URL,
optionally VAPI_HMAC_SECRET. Prints one PASS/FAIL line per check; exits 1 if any check fails.
SDKs: pip install -r scripts/conformance/requirements.txt (HTTP itself is plain urllib).
"""
import hashlib, hmac, inspect, json, os, re, sys, time, urllib.error, urllib.parse, urllib.request
import xml.etree.ElementTree as ET

import pydantic

from elevenlabs.types.conversation_initiation_client_data_request_input import (
    ConversationInitiationClientDataRequestInput as ElevenLabsInitData)
from retell import Retell
from retell.lib.webhook_auth import symmetric as retell_symmetric
from twilio.request_validator import RequestValidator
from twilio.twiml import TwiML, lower_camel
from twilio.twiml.voice_response import VoiceResponse
# Import vapi submodules directly: `vapi.types.ServerMessage` alone takes ~30 s to import.
from vapi.types.call import Call as VapiCall
from vapi.types.create_customer_dto import CreateCustomerDto as VapiCustomer
from vapi.types.server_message_assistant_request import ServerMessageAssistantRequest as VapiAssistantRequest
from vapi.types.server_message_assistant_request_phone_number import (
    ServerMessageAssistantRequestPhoneNumber_Twilio as VapiTwilioNumber)
from vapi.types.server_message_response_assistant_request import (
    ServerMessageResponseAssistantRequest as VapiAssistantResponse)
from vapi.types.server_message_status_update import ServerMessageStatusUpdate as VapiStatusUpdate

ACME, ADA, STRANGER, NOBODY = "+15550100001", "+15550200001", "+15550209999", "+15550109999"
FAILED, PASSED = [], []

def check(name, ok, detail=""):
    print(f"{'PASS' if ok else 'FAIL'}  {name}" + (f" — {detail}" if detail else ""), flush=True)
    (PASSED if ok else FAILED).append(name)

def expect_ok(name, problems):
    check(name, not problems, "; ".join(problems))

def post(base, path, body: bytes, headers):
    """POST raw bytes; returns (status, content-type, body text). Status 0 means no connection."""
    req = urllib.request.Request(base.rstrip("/") + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()
    except OSError as e:
        return 0, "", str(e)

def as_json(resp, want=200):
    """Parsed JSON body of resp=(status, ctype, text), or a string saying why it is not a JSON `want` answer."""
    status, _, text = resp
    if status != want:
        return f"status {status} (want {want}): {text[:200]}"
    try:
        return json.loads(text)
    except ValueError:
        return f"not JSON: {text[:200]}"

def json_ok(name, resp, problems_fn, *args, **kw):
    """A 200 JSON answer whose body passes problems_fn; returns the parsed body."""
    got = as_json(resp)
    expect_ok(name, [got] if isinstance(got, str) else problems_fn(got, *args, **kw))
    return got

def auth_401(name, resp):
    """A 401 answer with body {"error": {"code": str, "message": str}}."""
    got = as_json(resp, 401)
    err = got.get("error") if isinstance(got, dict) else None
    ok = isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(err.get("message"), str)
    expect_ok(name, [got] if isinstance(got, str) else [] if ok else [f"not {{error: {{code, message}}}}: {got}"])

def extra_keys(model, path="$"):
    """Keys the SDK model does not declare (Fern models allow extras silently), found recursively."""
    found = [f"{path}.{k}" for k in (getattr(model, "model_extra", None) or {})]
    for name in type(model).model_fields:
        value = getattr(model, name)
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if isinstance(item, pydantic.BaseModel):
                found += extra_keys(item, f"{path}.{name}" + (f"[{i}]" if isinstance(value, list) else ""))
    return found

def sdk_parse(model_cls, data):
    """Strict-validate with an SDK model; fail on undeclared keys and on any change in the round trip."""
    try:
        m = model_cls.model_validate(data, strict=True)
    except Exception as e:  # pydantic.ValidationError
        return None, [f"{model_cls.__name__}: {e}".replace("\n", " ")]
    probs = [f"unknown key {k}" for k in extra_keys(m)]
    dumped = m.model_dump(mode="json", by_alias=True, exclude_unset=True)
    if dumped != data:
        probs.append(f"{model_cls.__name__} round trip changed the body to {json.dumps(dumped)[:200]}")
    return m, probs

# ---- ElevenLabs: conversation initiation client data ------------------------------------------
def elevenlabs_problems(body, first_name=None):
    if not isinstance(body, dict):
        return ["body is not a JSON object"]
    probs = [] if body.get("type") == "conversation_initiation_client_data" else [f"type={body.get('type')!r}"]
    m, more = sdk_parse(ElevenLabsInitData, {k: v for k, v in body.items() if k != "type"})
    probs += more
    if m is None:
        return probs
    dv = m.dynamic_variables or {}
    probs += [f"dynamic_variables.{k} is {type(v).__name__}" for k, v in dv.items()
              if not isinstance(v, (str, int, float, bool, type(None)))]
    if first_name is not None and dv.get("first_name") != first_name:
        probs.append(f"first_name={dv.get('first_name')!r}, want {first_name!r}")
    co = m.conversation_config_override
    if co is not None:  # Acme enables only the first_message and language overrides
        set_groups = sorted(co.model_dump(exclude_unset=True))
        agent = co.agent.model_dump(exclude_unset=True) if co.agent else {}
        if set_groups != ["agent"] or not set(agent) <= {"first_message", "language"}:
            probs.append(f"overrides beyond agent.first_message/language: {body['conversation_config_override']}")
        if agent.get("language", "en") != "en" or not agent.get("first_message", "x"):
            probs.append(f"agent override values: {agent}")
    return probs

# ---- Vapi: assistant-request ------------------------------------------------------------------
def vapi_request(caller, called):
    """The assistant-request message built with Vapi's own models (minimal required fields filled)."""
    now = "2025-01-01T00:00:00Z"
    msg = VapiAssistantRequest(
        type="assistant-request", timestamp=time.time() * 1000, customer=VapiCustomer(number=caller),
        phone_number=VapiTwilioNumber(number=called, twilio_account_sid="AC" + "0" * 32),
        call=VapiCall(id=f"call-{time.time_ns()}", org_id="org-conformance", created_at=now, updated_at=now,
                      type="inboundPhoneCall", customer=VapiCustomer(number=caller)))
    return {"message": msg.model_dump(mode="json", by_alias=True, exclude_unset=True)}

def vapi_problems(body, first_name=None, want_error=False):
    if not isinstance(body, dict):
        return ["body is not a JSON object"]
    m, probs = sdk_parse(VapiAssistantResponse, body)
    if m is None:
        return probs
    if want_error:
        return probs + ([] if m.error and set(body) == {"error"} else [f"want only a spoken error: {body}"])
    if m.assistant_id != "asst-demo-acme":
        probs.append(f"assistantId={m.assistant_id!r}")
    ov = m.assistant_overrides
    if ov is None or not isinstance(ov.first_message, str) or not ov.first_message:
        probs.append("assistantOverrides.firstMessage missing")
    vv = (ov.variable_values if ov else None) or {}
    if first_name is not None and vv.get("first_name") != first_name:
        probs.append(f"variableValues.first_name={vv.get('first_name')!r}, want {first_name!r}")
    return probs

def vapi_hmac(secret, raw: bytes, ts_ms=None):
    ts = str(ts_ms if ts_ms is not None else int(time.time() * 1000))
    sig = hmac.new(secret.encode(), ts.encode() + b"." + raw, hashlib.sha256).hexdigest()
    return {"x-timestamp": ts, "x-signature": sig}

# ---- Retell: call_inbound ---------------------------------------------------------------------
RETELL_INBOUND_KEYS = {"override_agent_id", "override_agent_version", "dynamic_variables", "metadata", "agent_override"}

def retell_sign(raw: str, api_key, ts_ms=None):
    """Retell's own signer (retell.lib.webhook_auth), checked with Retell(...).verify before use."""
    sig = retell_symmetric["sign"](raw, api_key, ts_ms)
    now = int(time.time() * 1000) if ts_ms is None else ts_ms  # stale signatures: verify at their own time
    assert retell_symmetric["verify"](raw, api_key, sig, {"timestamp": now}), "Retell SDK rejects our signature"
    if ts_ms is None:
        assert Retell(api_key=api_key).verify(raw, api_key, sig), "Retell.verify rejects our signature"
    return sig

def retell_problems(body, first_name=None, known_org=True):
    # retell-sdk publishes no type for the inbound webhook response: check the documented field list.
    if not isinstance(body, dict) or set(body) != {"call_inbound"} or not isinstance(body["call_inbound"], dict):
        return [f'want {{"call_inbound": {{...}}}}: {body}']
    ci, probs = body["call_inbound"], []
    probs += [f"unknown key call_inbound.{k}" for k in set(ci) - RETELL_INBOUND_KEYS]
    dv = ci.get("dynamic_variables", {})
    if not isinstance(dv, dict):
        return probs + ["dynamic_variables is not an object"]
    probs += [f"dynamic_variables.{k} is {type(v).__name__}, not str" for k, v in dv.items() if not isinstance(v, str)]
    if first_name is not None and dv.get("first_name") != first_name:
        probs.append(f"first_name={dv.get('first_name')!r}, want {first_name!r}")
    if known_org:
        if ci.get("override_agent_id") != "agent_demo_acme":
            probs.append(f"override_agent_id={ci.get('override_agent_id')!r}")
        if not isinstance(ci.get("metadata"), dict) or not ci["metadata"].get("organization_id"):
            probs.append(f"metadata.organization_id missing: {ci.get('metadata')}")
    return probs

# ---- Twilio: TwiML ----------------------------------------------------------------------------
VOICE_VERBS = {"Say", "Play", "Pause", "Gather", "Dial", "Record", "Redirect", "Reject", "Hangup", "Enqueue",
               "Leave", "Connect", "Start", "Stop", "Refer", "Pay", "Prompt", "Sms", "Message"}
TEXT_PARAMS = {"message", "url", "number", "name", "phone_number", "words", "identity", "sim_sid", "sip_url",
               "application_sid"}

def twiml_rebuild(parent: TwiML, el, probs):
    """Re-create `el` under `parent` through the twilio SDK's own builder methods (VoiceResponse.say, ...)."""
    method = re.sub(r"(?<!^)([A-Z])", r"_\1", el.tag).lower().replace("-", "_")
    fn = getattr(parent, method, None) or getattr(parent, method + "_", None)
    if not callable(fn) or method in ("append", "nest", "xml", "to_xml", "add_child"):
        probs.append(f"<{el.tag}> is not allowed inside <{parent.name}>")
        return
    params = [p for p in inspect.signature(fn).parameters if p != "kwargs"]
    text_param = params[0] if params and params[0] in TEXT_PARAMS else None
    attr_to_param = {lower_camel(TwiML.MAP.get(p, p)): p for p in params if p != text_param}
    kwargs = {}
    for attr, value in el.attrib.items():
        if attr not in attr_to_param:
            probs.append(f"<{el.tag}> has unknown attribute {attr!r}")
        kwargs[attr_to_param.get(attr, attr)] = value
    text = (el.text or "").strip()
    if text and not text_param:
        probs.append(f"<{el.tag}> may not carry text")
    child = fn(*([el.text] if text_param and el.text else []), **kwargs)
    for sub in el:
        twiml_rebuild(child, sub, probs)
        if sub.tail and sub.tail.strip():
            child.nest(sub.tail)

def norm(el):
    return (el.tag, sorted(el.attrib.items()), (el.text or "").strip(), (el.tail or "").strip(), [norm(c) for c in el])

def twiml_problems(xml_text, must_contain=None):
    try:
        root = ET.fromstring(xml_text.encode())
    except ET.ParseError as e:
        return [f"not XML: {e}: {xml_text[:200]}"]
    if root.tag != "Response":
        return [f"root is <{root.tag}>, want <Response>"]
    probs = [f"<{c.tag}> is not a voice verb" for c in root if c.tag not in VOICE_VERBS]
    if (root.text or "").strip():
        probs.append("text directly inside <Response>")
    rebuilt = VoiceResponse()
    for c in root:
        twiml_rebuild(rebuilt, c, probs)
    if not probs and norm(ET.fromstring(rebuilt.to_xml().encode())) != norm(root):
        probs.append(f"differs from twilio VoiceResponse rebuild: {rebuilt.to_xml()}")
    if must_contain and must_contain not in "".join(root.itertext()):
        probs.append(f"{must_contain!r} not in spoken text: {xml_text[:200]}")
    return probs

def twilio_params(caller, called):
    return {"CallSid": "CA" + os.urandom(16).hex(), "AccountSid": "AC" + "0" * 32, "From": caller, "To": called,
            "CallStatus": "ringing", "Direction": "inbound"}

# ---- live run against a server ----------------------------------------------------------------
def live(base):
    names = ("ELEVENLABS_SECRET", "VAPI_SECRET", "RETELL_API_KEY", "TWILIO_AUTH_TOKEN", "TWILIO_PUBLIC_URL")
    env = {k: os.environ.get(k, "") for k in names}
    missing = [k for k, v in env.items() if not v]
    check("environment", not missing, f"missing {', '.join(missing)}" if missing else "")
    if missing:
        return
    J = {"Content-Type": "application/json"}

    # ElevenLabs: the agent's webhook is configured to send the secret as request header x-sidecache-secret.
    def el(caller, called, secret=env["ELEVENLABS_SECRET"]):
        body = {"caller_id": caller, "agent_id": "agent_x", "called_number": called, "call_sid": "CA" + os.urandom(16).hex()}
        hdr = dict(J, **({"x-sidecache-secret": secret} if secret is not None else {}))
        return post(base, "/v1/webhooks/elevenlabs", json.dumps(body).encode(), hdr)
    json_ok("elevenlabs known caller", el(ADA, ACME), elevenlabs_problems, "Ada")
    got = json_ok("elevenlabs unknown caller", el(STRANGER, ACME), elevenlabs_problems)
    dv = (got.get("dynamic_variables") or {}) if isinstance(got, dict) else {}
    check("elevenlabs unknown caller gets dynamic_variable_defaults", dv.get("plan") == "none" and dv.get("vip") is False, str(dv))
    json_ok("elevenlabs unknown number", el(ADA, NOBODY), elevenlabs_problems)
    auth_401("elevenlabs missing secret → 401", el(ADA, ACME, None))
    auth_401("elevenlabs wrong secret → 401", el(ADA, ACME, "wrong-" + env["ELEVENLABS_SECRET"]))

    # Vapi: request bodies are built with the SDK's ServerMessageAssistantRequest / ServerMessageStatusUpdate.
    def vapi(msg, headers):
        return post(base, "/v1/webhooks/vapi", json.dumps(msg).encode(), dict(J, **headers))
    sec = {"X-Vapi-Secret": env["VAPI_SECRET"]}
    json_ok("vapi known caller (X-Vapi-Secret)", vapi(vapi_request(ADA, ACME), sec), vapi_problems, "Ada")
    json_ok("vapi known caller (Authorization: Bearer)",
            vapi(vapi_request(ADA, ACME), {"Authorization": "Bearer " + env["VAPI_SECRET"]}), vapi_problems, "Ada")
    json_ok("vapi unknown caller", vapi(vapi_request(STRANGER, ACME), sec), vapi_problems)
    json_ok("vapi unknown number → spoken error", vapi(vapi_request(ADA, NOBODY), sec), vapi_problems, want_error=True)
    auth_401("vapi wrong secret → 401", vapi(vapi_request(ADA, ACME), {"X-Vapi-Secret": "wrong-" + env["VAPI_SECRET"]}))
    auth_401("vapi no secret → 401", vapi(vapi_request(ADA, ACME), {}))
    status = VapiStatusUpdate(type="status-update", status="in-progress", timestamp=time.time() * 1000)
    got = as_json(vapi({"message": status.model_dump(mode="json", by_alias=True, exclude_unset=True)}, sec))
    check("vapi status-update → {}", got == {}, "" if got == {} else str(got))
    if os.environ.get("VAPI_HMAC_SECRET"):
        raw = json.dumps(vapi_request(ADA, ACME)).encode()
        json_ok("vapi HMAC signature", post(base, "/v1/webhooks/vapi", raw,
                dict(J, **vapi_hmac(os.environ["VAPI_HMAC_SECRET"], raw))), vapi_problems, "Ada")
        auth_401("vapi bad HMAC → 401", post(base, "/v1/webhooks/vapi", raw,
                 dict(J, **vapi_hmac("wrong-" + os.environ["VAPI_HMAC_SECRET"], raw))))
    else:
        print("SKIP  vapi HMAC (VAPI_HMAC_SECRET not set)")

    # Retell: x-retell-signature made by Retell's signer and checked with Retell's verify before sending.
    key = env["RETELL_API_KEY"]
    def rbody(caller, called):
        inbound = {"from_number": caller, "to_number": called, "agent_id": "agent_x"}
        return json.dumps({"event": "call_inbound", "call_inbound": inbound}, separators=(",", ":"))
    def retell(raw, sig="sign"):
        sig = retell_sign(raw, key) if sig == "sign" else sig
        return post(base, "/v1/webhooks/retell", raw.encode(), dict(J, **({"x-retell-signature": sig} if sig else {})))
    raw = rbody(ADA, ACME)
    first = json_ok("retell known caller", retell(raw), retell_problems, "Ada")
    again = as_json(retell(raw))  # a retry: same body, freshly signed
    check("retell retry → identical answer", again == first, "" if again == first else f"{first} != {again}")
    json_ok("retell unknown caller", retell(rbody(STRANGER, ACME)), retell_problems)
    json_ok("retell unknown number", retell(rbody(ADA, NOBODY)), retell_problems, known_org=False)
    wrong = retell_sign(raw, "wrong-" + key)
    stale = retell_sign(raw, key, int(time.time() * 1000) - 10 * 60 * 1000)
    check("retell SDK verify rejects the wrong-key and stale signatures",
          not Retell(api_key=key).verify(raw, key, wrong) and not Retell(api_key=key).verify(raw, key, stale))
    auth_401("retell bad signature → 401", retell(raw, wrong))
    auth_401("retell stale (10 min) signature → 401", retell(raw, stale))
    auth_401("retell missing signature → 401", retell(raw, None))

    # Twilio: X-Twilio-Signature over TWILIO_PUBLIC_URL + path (+ ?query) and the form params.
    validator = RequestValidator(env["TWILIO_AUTH_TOKEN"])
    def twilio(caller, called, path="/v1/webhooks/twilio/voice", sig=None):
        params, url = twilio_params(caller, called), env["TWILIO_PUBLIC_URL"].rstrip("/") + path
        good = validator.compute_signature(url, params)
        assert validator.validate(url, params, good), "twilio RequestValidator rejects our own signature"
        hdr = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": sig or good}
        return post(base, path, urllib.parse.urlencode(params).encode(), hdr)
    for label, args, must in (("known caller", (ADA, ACME), "Ada"), ("unknown caller", (STRANGER, ACME), None),
                              ("unknown number", (ADA, NOBODY), None),
                              ("signed URL with query", (ADA, ACME, "/v1/webhooks/twilio/voice?src=conformance"), "Ada")):
        status, ctype, text = twilio(*args)
        probs = [] if status == 200 else [f"status {status}: {text[:200]}"]
        if status == 200 and ctype.split(";")[0].strip() not in ("text/xml", "application/xml"):
            probs.append(f"Content-Type {ctype!r}")
        expect_ok(f"twilio {label}", probs or twiml_problems(text, must))
    auth_401("twilio wrong signature → 401", twilio(ADA, ACME, sig="AAAAAAAAAAAAAAAAAAAAAAAAAAA="))

# ---- offline self-test: signers against the SDKs' verifiers, sample bodies against the models ---
def self_test():
    ada = {"first_name": "Ada", "plan": "none", "vip": False, "visits": 3, "last_seen": None}
    el_ok = {"type": "conversation_initiation_client_data", "dynamic_variables": ada,
             "conversation_config_override": {"agent": {"first_message": "Hi Ada!", "language": "en"}}}
    expect_ok("self: elevenlabs sample parses", elevenlabs_problems(el_ok, "Ada"))
    expect_ok("self: elevenlabs sample without overrides parses",
              elevenlabs_problems({"type": "conversation_initiation_client_data", "dynamic_variables": ada}))
    bad_key = dict(el_ok, conversation_config_override={"agent": {"first_message": "Hi", "languag": "en"}})
    check("self: elevenlabs unknown key is noticed", bool(elevenlabs_problems(bad_key)))
    check("self: elevenlabs wrong type is noticed", bool(elevenlabs_problems(dict(el_ok, dynamic_variables=[1]))))
    check("self: elevenlabs missing `type` is noticed", bool(elevenlabs_problems({"dynamic_variables": ada})))

    va_ok = {"assistantId": "asst-demo-acme",
             "assistantOverrides": {"variableValues": ada, "firstMessage": "Good morning, Ada!"}}
    expect_ok("self: vapi sample parses", vapi_problems(va_ok, "Ada"))
    expect_ok("self: vapi error sample parses", vapi_problems({"error": "Sorry, this number is not set up."}, want_error=True))
    check("self: vapi snake_case key is noticed", bool(vapi_problems(dict(va_ok, assistant_id="x"))))
    req = vapi_request(ADA, ACME)["message"]
    check("self: vapi request is camelCase", {"phoneNumber", "customer", "call", "type"} <= set(req), str(sorted(req)))

    key, raw = "key_selftest", json.dumps({"event": "call_inbound", "call_inbound": {"from_number": ADA}})
    sig = retell_sign(raw, key)
    check("self: retell signature passes Retell.verify", Retell(api_key=key).verify(raw, key, sig), sig)
    check("self: retell tampered body fails Retell.verify", not Retell(api_key=key).verify(raw + " ", key, sig))
    stale = retell_sign(raw, key, int(time.time() * 1000) - 600_000)
    check("self: retell stale signature fails Retell.verify", not Retell(api_key=key).verify(raw, key, stale))
    re_ok = {"call_inbound": {"dynamic_variables": {"first_name": "Ada", "vip": "false"},
                              "override_agent_id": "agent_demo_acme", "metadata": {"organization_id": "o1", "lead_id": "l1"}}}
    expect_ok("self: retell sample passes", retell_problems(re_ok, "Ada"))
    re_bad = {"call_inbound": dict(re_ok["call_inbound"], dynamic_variables={"vip": False})}
    check("self: retell non-string variable is noticed", bool(retell_problems(re_bad)))

    v, url = RequestValidator("token_selftest"), "https://example.test/v1/webhooks/twilio/voice"
    params = twilio_params(ADA, ACME)
    tsig = v.compute_signature(url, params)
    check("self: twilio signature passes RequestValidator.validate", v.validate(url, params, tsig), tsig)
    check("self: twilio wrong token fails validate", not RequestValidator("other").validate(url, params, tsig))
    good = ('<?xml version="1.0" encoding="UTF-8"?><Response><Say>Good morning, Ada! Thanks for calling Acme Dental.'
            '</Say><Pause length="1"/></Response>')
    expect_ok("self: twilio sample TwiML passes", twiml_problems(good, "Ada"))
    expect_ok("self: twilio nested TwiML passes", twiml_problems(
        '<Response><Gather input="speech" action="/next"><Say voice="alice">Hi</Say></Gather><Dial>+15550100001</Dial></Response>'))
    check("self: twilio unknown verb is noticed", bool(twiml_problems("<Response><Speak>x</Speak></Response>")))
    check("self: twilio unknown attribute is noticed", bool(twiml_problems('<Response><Pause lenght="1"/></Response>')))
    check("self: twilio non-Response root is noticed", bool(twiml_problems("<Reply><Say>x</Say></Reply>")))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    self_test() if sys.argv[1] == "--self-test" else live(sys.argv[1])
    print(f"{len(PASSED)} passed, {len(FAILED)} failed")  # the plain closing line CI runners read
    sys.exit(1 if FAILED else 0)
