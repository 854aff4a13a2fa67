"""JUnit XML, the test-report format every CI system reads (GitHub Actions through
test-reporter actions, GitLab, Jenkins, Azure Pipelines): one ``testsuite`` of
``testcase`` elements, each with an optional ``failure``, ``error`` or ``skipped``."""
from __future__ import annotations

import socket
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .schema import write_text


@dataclass
class Case:
    name: str
    classname: str
    seconds: float = 0.0
    failure: str | None = None        # parity failure: message
    error: str | None = None          # export or bench failure: message (outranks a failure)
    skipped: str | None = None
    details: str = ""                 # body text of failure / error
    properties: dict[str, str] = field(default_factory=dict)
    stdout: str = ""


def junit_xml(cases: list[Case], suite: str = "edgekit") -> str:
    root = ET.Element("testsuites", name=suite)
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)),
                       failures=str(sum(c.failure is not None and c.error is None for c in cases)),
                       errors=str(sum(c.error is not None for c in cases)),
                       skipped=str(sum(c.skipped is not None and c.error is None and c.failure is None
                                       for c in cases)),
                       time=f"{sum(c.seconds for c in cases):.3f}",
                       timestamp=time.strftime("%Y-%m-%dT%H:%M:%S"), hostname=socket.gethostname())
    for c in cases:
        tc = ET.SubElement(ts, "testcase", name=c.name, classname=c.classname, time=f"{c.seconds:.3f}")
        if c.properties:
            props = ET.SubElement(tc, "properties")
            for k, v in c.properties.items():
                ET.SubElement(props, "property", name=k, value=str(v))
        # one outcome per testcase, the worst: an error (the cell could not be run or measured)
        # outranks a parity failure, whose text then follows the error's
        if c.error is not None:
            body = (c.details or c.error) if c.failure is None else f"{c.error}\n\n{c.details or c.failure}"
            ET.SubElement(tc, "error", message=c.error, type="ExportError").text = body
        elif c.failure is not None:
            ET.SubElement(tc, "failure", message=c.failure, type="ParityFailure").text = c.details or c.failure
        elif c.skipped is not None:
            ET.SubElement(tc, "skipped", message=c.skipped)
        if c.stdout:
            ET.SubElement(tc, "system-out").text = c.stdout
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(cases: list[Case], path: str | Path, suite: str = "edgekit") -> Path:
    return write_text(path, junit_xml(cases, suite))
