"""Build glue for the wheel: the package ships a native library (the SQLite
extension), so the wheel must be platform-specific. It is not tied to a Python
version or ABI (the library is loaded by SQLite, not imported by Python), so
the tag is ``py3-none-<platform>``, e.g. ``py3-none-linux_x86_64``.

Everything else is in pyproject.toml. Build it with ``make wheel`` from the
repository root, which first copies dist/libcrsql_stream.so into
src/crsql_stream/, then has ``auditwheel repair`` check the library against
the manylinux policies and retag the wheel with the glibc it really needs
(``py3-none-manylinux_2_34_x86_64`` when built on Debian 12): a
``linux_x86_64`` wheel is not accepted by PyPI and promises nothing about
the target system.
"""

import os

from setuptools import setup
from setuptools.dist import Distribution

try:  # setuptools >= 70.1 has its own bdist_wheel
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # older setuptools: the `wheel` package provides it
    from wheel.bdist_wheel import bdist_wheel

HERE = os.path.dirname(os.path.abspath(__file__))
LIBS = ("libcrsql_stream.so", "libcrsql_stream.dylib", "crsql_stream.dll")
if not any(os.path.isfile(os.path.join(HERE, "src", "crsql_stream", n)) for n in LIBS):
    raise SystemExit(
        "crsql_stream: the extension library is missing from src/crsql_stream/; "
        "build the wheel with `make wheel` from the repository root, which builds "
        "dist/libcrsql_stream.so and copies it there"
    )


class BinaryDistribution(Distribution):
    """Makes setuptools treat the package as platform-specific."""

    def has_ext_modules(self):
        return True


class PlatformWheel(bdist_wheel):
    """A wheel tagged py3-none-<platform>: any Python 3, this platform only."""

    def finalize_options(self):
        super().finalize_options()
        self.root_is_pure = False

    def get_tag(self):
        _python, _abi, plat = super().get_tag()
        return "py3", "none", plat


setup(distclass=BinaryDistribution, cmdclass={"bdist_wheel": PlatformWheel})
