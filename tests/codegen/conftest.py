"""Shared set-up of the codegen tests: a private kernel cache per session, and a clean skip without a C compiler."""

import os
import shutil

import pytest

from ember.codegen import cc

HAVE_CC = cc.find_compiler() is not None


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_no_compiler: runs even when no C compiler is installed")


def pytest_collection_modifyitems(config, items):
    if HAVE_CC:
        return
    skip = pytest.mark.skip(reason="no C compiler (set CC or install gcc/clang)")
    for item in items:
        if "tests/codegen/" in str(item.fspath).replace(os.sep, "/") and "needs_no_compiler" not in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def kernel_cache(tmp_path_factory):
    """Every codegen test compiles into one fresh cache directory (hermetic, and shared by the session)."""
    path = tmp_path_factory.mktemp("ember-kernels")
    old = os.environ.get("EMBER_CACHE_DIR")
    os.environ["EMBER_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EMBER_CACHE_DIR", None)
    else:
        os.environ["EMBER_CACHE_DIR"] = old
    shutil.rmtree(path, ignore_errors=True)
