"""The Java side of the job on Flink: fetched by Maven, cached outside the repo.

``tools/flink/pom.xml`` names Beam's Flink runner (with Flink 1.19 itself) and
Beam's Java GCP IO with its expansion service. :func:`classpath` runs ``mvn
dependency:build-classpath`` on it once: the jars land in Maven's own repository
(``~/.m2``), the resulting class path in :data:`CACHE_DIR`. Nothing binary is
committed, and a second call costs a file read.

Beam's Python FlinkRunner starts its job server as ``java -jar <jar>``, and
neither of Beam's ready-made jars (``beam-runners-flink-1.19-job-server``,
``beam-sdks-java-io-google-cloud-platform-expansion-service``) is served here, so
:func:`launcher_jar` writes a *pathing jar*: a jar with no classes whose manifest
names the main class and the Maven class path, and opens the JDK packages Flink
1.19 needs on Java 17 (``Add-Opens``; Flink's own scripts pass the same as
``--add-opens``). It is what ``--flink_job_server_jar`` takes.

Versions: the pom's ``beam.version`` must equal the installed apache-beam
(:func:`check_versions`): a job server and SDK workers of different Beam
versions are not a combination Beam supports.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import apache_beam

POM = Path(__file__).resolve().parent / "pom.xml"
#: Where class paths and launcher jars are kept (outside the repository).
CACHE_DIR = Path(os.environ.get("DATASTREAMER_CACHE", Path.home() / ".cache" / "iot-data-streamer")) / "flink"

#: Main classes of the two services Beam publishes as jars (same classes, our class path).
JOB_SERVER_MAIN = "org.apache.beam.runners.flink.FlinkJobServerDriver"
EXPANSION_SERVICE_MAIN = "org.apache.beam.sdk.expansion.service.ExpansionService"

#: JDK packages Flink 1.19 reflects into on Java 17 (Flink's ``env.java.opts.all``
#: default of its distribution's config; Kryo and the closure cleaner need them).
JAVA17_OPENS = (
    "java.base/java.util", "java.base/java.lang", "java.base/java.lang.reflect", "java.base/java.io",
    "java.base/java.net", "java.base/java.nio", "java.base/sun.nio.ch", "java.base/java.text",
    "java.base/java.time", "java.base/java.util.concurrent", "java.base/java.util.concurrent.atomic",
    "java.base/java.util.concurrent.locks", "java.base/java.lang.invoke", "java.base/java.math",
    "java.base/java.security", "java.sql/java.sql",
)


class JavaToolsError(RuntimeError):
    """Java or Maven is missing or failed; the message says what to install or read."""


def pom_beam_version() -> str:
    match = re.search(r"<beam\.version>([^<]+)</beam\.version>", POM.read_text())
    if not match:
        raise JavaToolsError(f"{POM}: no <beam.version> property")
    return match.group(1)


def check_versions() -> str:
    """The Beam version of both sides; raises when Python's and Java's differ."""
    java_side, python_side = pom_beam_version(), apache_beam.__version__
    if java_side != python_side:
        raise JavaToolsError(
            f"Beam versions differ: {POM} fetches Beam {java_side} for Java, apache-beam {python_side} is "
            "installed. Move both together (constraints.txt and <beam.version>); see docs/flink.md.")
    return java_side


def java() -> str:
    """The ``java`` to run Flink with: ``$JAVA_HOME/bin/java``, else the one on PATH (17 here)."""
    home = os.environ.get("JAVA_HOME")
    candidate = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    if not candidate or not Path(candidate).exists():
        raise JavaToolsError("java not found: install a JDK 17 (Debian: apt-get install openjdk-17-jdk-headless) "
                             "or set JAVA_HOME")
    return candidate


def java17_flags() -> list[str]:
    return [f"--add-opens={package}=ALL-UNNAMED" for package in JAVA17_OPENS]


def _mvn() -> str:
    mvn = shutil.which("mvn")
    if not mvn:
        raise JavaToolsError("mvn not found: install Maven (Debian: apt-get install maven); it fetches Beam's Flink "
                             "runner and Flink from Maven Central")
    return mvn


def _cache(version: str) -> Path:
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    return CACHE_DIR / f"beam-{version}-{digest}"


def classpath() -> list[Path]:
    """The jars of the pom (fetched by Maven the first time), in Maven's order."""
    version = check_versions()
    cache = _cache(version)
    listing = cache / "classpath.txt"
    if listing.exists():
        jars = [Path(p) for p in listing.read_text().split(os.pathsep) if p]
        if jars and all(jar.exists() for jar in jars):
            return jars
    cache.mkdir(parents=True, exist_ok=True)
    sys.stderr.write(f"fetching Beam {version}'s Flink runner and GCP IO jars with Maven into ~/.m2 "
                     "(about 300 MB the first time)\n")
    partial = listing.with_suffix(".partial")
    result = subprocess.run([_mvn(), "-B", "-q", "-f", str(POM), "dependency:build-classpath",
                             f"-Dmdep.outputFile={partial}"], capture_output=True, text=True, check=False)
    if result.returncode != 0 or not partial.exists():
        raise JavaToolsError(f"mvn could not fetch the jars of {POM} (exit {result.returncode}):\n"
                             f"{(result.stdout + result.stderr)[-3000:]}")
    partial.replace(listing)
    return [Path(p) for p in listing.read_text().split(os.pathsep) if p]


def _manifest(main_class: str, jars: list[Path]) -> bytes:
    """A JAR manifest: ``Class-Path`` as file URLs, lines wrapped at 72 bytes."""
    def wrap(line: str) -> list[str]:
        data, out = line.encode(), []
        out.append(data[:72])
        data = data[72:]
        while data:
            out.append(b" " + data[:71])
            data = data[71:]
        return [chunk.decode() for chunk in out]

    fields = {
        "Manifest-Version": "1.0",
        "Main-Class": main_class,
        "Class-Path": " ".join(jar.resolve().as_uri() for jar in jars),
        "Add-Opens": " ".join(JAVA17_OPENS),
    }
    lines = [part for key, value in fields.items() for part in wrap(f"{key}: {value}")]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def launcher_jar(main_class: str = JOB_SERVER_MAIN) -> Path:
    """A pathing jar that runs ``main_class`` on the pom's class path (``java -jar``)."""
    jars = classpath()
    name = main_class.rsplit(".", 1)[1]
    target = _cache(pom_beam_version()) / f"{name}.jar"
    manifest = _manifest(main_class, jars)
    if target.exists():
        with zipfile.ZipFile(target) as existing:
            if existing.read("META-INF/MANIFEST.MF") == manifest:
                return target
    partial = target.with_suffix(".partial")
    with zipfile.ZipFile(partial, "w") as jar:
        jar.writestr("META-INF/MANIFEST.MF", manifest)
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    """``python -m tools.flink.jars``: fetch the jars, print the launcher jars."""
    try:
        print(launcher_jar(JOB_SERVER_MAIN))
        print(launcher_jar(EXPANSION_SERVICE_MAIN))
    except JavaToolsError as err:
        sys.stderr.write(f"error: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
