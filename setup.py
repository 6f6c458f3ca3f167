"""The one compiled part: mailops/insight/_pflogc.c (pflogsumm's figures, `mailops logs summary`).
Optional: without a C compiler mailops installs and `logs summary` uses its Python engines."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("mailops.insight._pflogc", ["mailops/insight/_pflogc.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"])])
