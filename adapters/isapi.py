"""What the Hikvision ISAPI dialects share: safe XML reading and the device's ``ResponseStatus`` answer.

XML is parsed with defusedxml (no DTDs, no entities, no external references) and namespaces are
dropped: firmware use isapi.org's or hikvision.com's, or none.

An ISAPI device answers a command (and a request it cannot serve) with a ``ResponseStatus``
document, XML or, for ``?format=json`` requests, JSON::

    <ResponseStatus version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">
      <requestURL>/ISAPI/Parking/channels/1/barrierGate</requestURL>
      <statusCode>1</statusCode><statusString>OK</statusString><subStatusCode>ok</subStatusCode>
    </ResponseStatus>

``statusCode`` 1 is OK (``shared/reference/downlink-console-scale.md``); the other codes and their
``statusString`` are those of the ISAPI guides as quoted by public clients (2 device busy, 3 device
error, 4 invalid operation, 5 invalid XML format, 6 invalid XML content, 7 reboot required), with
``subStatusCode`` the device's own word for the cause (``notSupport``, ``lowPrivilege``...). Nothing
here was verified on a device.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from adapters.base import Fields, RawMessage, load_json_object
from adapters.commands import CommandReply, DeviceRequest, HttpRequest, ReplyStatus
from foundation.errors import PayloadRejected

MAX_XML_BYTES = 256 * 1024
NAMESPACE = "http://www.isapi.org/ver20/XMLSchema"
STATUS_OK = 1
STATUS_MEANINGS = {
    2: "device busy",
    3: "device error",
    4: "invalid operation",
    5: "invalid XML format",
    6: "invalid XML content",
    7: "reboot required",
}


def strip_namespaces(root: Element) -> Element:
    """The tree with every ``{namespace}`` prefix removed from its tags."""
    for element in root.iter():
        if "}" in element.tag:
            element.tag = element.tag.split("}", 1)[1]
    return root


def parse_xml(xml: bytes, *, what: str = "XML") -> Element:
    """The root element of a device's XML (namespaces stripped), or reject with the reason."""
    if len(xml) > MAX_XML_BYTES:
        raise PayloadRejected("payload_too_large", f"{what} is {len(xml)} bytes > {MAX_XML_BYTES}")
    try:
        root = fromstring(xml, forbid_dtd=True)
    except DefusedXmlException as exc:
        raise PayloadRejected(
            "forbidden_xml", f"{what} uses a forbidden construct: {type(exc).__name__}"
        ) from None
    except ParseError as exc:
        raise PayloadRejected("malformed_xml", f"{what} does not parse: {exc}") from None
    except (LookupError, ValueError) as exc:  # an unknown encoding in the XML declaration, for one
        raise PayloadRejected("malformed_xml", f"{what} cannot be decoded: {exc}") from None
    return strip_namespaces(root)


def xml_text(root: Element, path: str, *, required: bool = False, max_len: int = 128) -> str | None:
    """The stripped text of the element at ``path``; empty counts as absent."""
    node = root.find(path)
    value = (node.text or "").strip() if node is not None else ""
    if not value:
        if required:
            raise PayloadRejected("missing_field", "required element is missing or empty", field=path)
        return None
    if len(value) > max_len or any(ord(c) < 0x20 for c in value):
        raise PayloadRejected("bad_field", f"not a short printable text (max {max_len})", field=path)
    return value


def xml_int(root: Element, path: str, lo: int, hi: int, *, required: bool = False) -> int | None:
    """The integer at ``path`` within lo..hi."""
    value = xml_text(root, path, required=required, max_len=12)
    if value is None:
        return None
    try:
        number = int(value)
    except ValueError:
        raise PayloadRejected("bad_field", f"expected an integer, got {value!r}", field=path) from None
    if not lo <= number <= hi:
        raise PayloadRejected("out_of_range", f"{number} is outside {lo}..{hi}", field=path)
    return number


def xml_document(root_tag: str, children: dict[str, str]) -> bytes:
    """A request body ``<root_tag version="2.0" xmlns=ISAPI><child>text</child>...</root_tag>``.

    The texts are our own vocabulary (``open``, ``lock``...), never user input: nothing is escaped.
    """
    inner = "".join(f"<{name}>{text}</{name}>" for name, text in children.items())
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{root_tag} version="2.0" xmlns="{NAMESPACE}">'
        f"{inner}</{root_tag}>"
    ).encode()


def sent_http(dialect: str, sent: DeviceRequest | None) -> HttpRequest:
    """The HTTP request an answer belongs to; decoding an HTTP answer without it is a programming error."""
    if not isinstance(sent, HttpRequest):
        raise TypeError(f"{dialect} answers carry no id: pass the HttpRequest they answer as sent=")
    return sent


def is_json(raw: RawMessage) -> bool:
    """Whether an answer is JSON (``?format=json`` requests, or a body that starts like one)."""
    ctype = (raw.content_type or "").lower()
    return "json" in ctype or (not ctype and raw.body.lstrip()[:1] == b"{")


def _words(doc: Fields, key: str, max_len: int) -> str | None:
    """An optional text of the device; blank counts as absent (firmware pad empty fields), as in XML."""
    value = doc.raw(key)
    if isinstance(value, str) and not value.strip():
        return None
    return doc.opt_text(key, max_len=max_len)


def response_status(raw: RawMessage, sent: HttpRequest) -> CommandReply:
    """An ISAPI ``ResponseStatus`` (XML or JSON) as the reply to ``sent``: OK, or refused with the cause."""
    if is_json(raw):
        doc = Fields(load_json_object(raw.body, what="ResponseStatus"))
        code = doc.integer("statusCode", lo=0, hi=99)
        status_string = _words(doc, "statusString", 120)
        sub_status = _words(doc, "subStatusCode", 120)
        detail = _words(doc, "errorMsg", 200)
    else:
        root = parse_xml(raw.body, what="ResponseStatus")
        if root.tag != "ResponseStatus":
            raise PayloadRejected("missing_field", f"root element is {root.tag!r}", field="ResponseStatus")
        code = xml_int(root, "statusCode", 0, 99, required=True) or 0
        status_string = xml_text(root, "statusString", max_len=120)
        sub_status = xml_text(root, "subStatusCode", max_len=120)
        detail = None
    device_code = f"{code}/{sub_status}" if sub_status else str(code)
    if code == STATUS_OK:
        return CommandReply(sent.correlation_id, ReplyStatus.OK, device_code=device_code)
    said = status_string or STATUS_MEANINGS.get(code, f"status code {code}")
    reason = ": ".join(part for part in (said, sub_status, detail) if part)
    return CommandReply(sent.correlation_id, ReplyStatus.REFUSED, reason=reason, device_code=device_code)
