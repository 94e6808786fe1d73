"""Lazy package attributes, and Keras objects registered as soon as Keras is imported.

`python -m PKG --help` and `--version` must not import TensorFlow or Keras (16-19 s on a busy
CPU), and a JAX or PyTorch user must be able to import the models without TensorFlow. So a
package's `__init__` holds only data (`PRESETS` from `PKG/presets.py`, the CLI tables) and
declares where its public names live; `lazy_package` turns that into a PEP 562 module
`__getattr__`: the first access to `PKG.train` imports `PKG.train` (TensorFlow first, quietly,
when the module needs it) and caches the function on the package.

A package and a submodule share names (`kneeoa.train` is the function; `kneeoa/train.py` its
module): when any import of the submodule binds it on the package, the package's module class
puts the public function back, so `kneeoa.train(...)` keeps working whatever was imported first.

Registration (CONTRACT: "importing a package registers its Keras objects"): `import PKG` names
the modules that register its Keras objects (`keras_modules`). They are imported at once when
Keras is already imported, and otherwise right after Keras' own first import (a post-import hook
on the `keras` module), so `import PKG` followed by `keras.models.load_model("model.keras")`
works in a fresh process in either order. If Keras' first import happens while one of the
suite's own modules is half-imported (the import chain that pulled Keras in), the hook leaves the
registration pending, to avoid a circular import, and it completes on the next lazy attribute
access or `register_pending()` call; the chain itself imports the modules it needs.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
import types

from common._quiet_import import import_tensorflow_quietly
from common._quiet_import import keras_backend

#: The suite's packages; a half-imported module of these defers registration (see above).
SUITE_PACKAGES = ("common", "kneeoa", "deepra", "spinenet", "boneage", "mura")
_DEFERRING_PACKAGES = (*SUITE_PACKAGES, "keras_hub", "keras", "tensorflow")

_PENDING = []
_LOCK = threading.RLock()


class _LazyPackage(types.ModuleType):
    """Module class of a lazy package: a submodule bound on it yields to the public name it exports."""

    def __setattr__(self, name, value):
        exports = self.__dict__.get("_lazy_exports", {})
        if (
            isinstance(value, types.ModuleType)
            and exports.get(name) == value.__name__
            and hasattr(value, name)
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


def lazy_package(package, exports, *, backend_free=None, keras_modules=None):
    """Makes a package's public names lazy and its Keras objects registered on Keras' import.

    Call it at the end of the package's `__init__`: `__getattr__, __dir__ = lazy_package(...)`.

    Args:
        package: the package's `__name__`.
        exports: public name -> module that defines it (`{"train": "kneeoa.train"}`); a name equal
            to its module's last part and not defined there (`"layers": "common.layers"`) is the
            module itself.
        backend_free: modules that import Keras but not TensorFlow: imported without TensorFlow
            unless Keras' backend is TensorFlow. Default: `PKG.model` (`PKG/presets.py` is
            plain data and imports neither).
        keras_modules: modules whose import registers the package's Keras objects. Default:
            `common.layers`, `common.losses` and `PKG.model`.

    Returns:
        `(__getattr__, __dir__)` for the package's module namespace (PEP 562).
    """
    if backend_free is None:
        backend_free = (f"{package}.model",)
    if keras_modules is None:
        keras_modules = ("common.layers", "common.losses", f"{package}.model")
    module = sys.modules[package]
    module.__dict__["_lazy_exports"] = dict(exports)
    module.__class__ = _LazyPackage

    def __getattr__(name):
        target = exports.get(name)
        if target is None:
            submodule = f"{package}.{name}"
            if name.startswith("__") or importlib.util.find_spec(submodule) is None:
                raise AttributeError(f"module '{package}' has no attribute '{name}'")
            target = submodule
        prepare_import(target, backend_free=target in backend_free)
        loaded = importlib.import_module(target)
        register_pending()
        if target == f"{package}.{name}" and not hasattr(loaded, name):
            value = loaded
        else:
            value = getattr(loaded, name)
        setattr(module, name, value)
        return value

    def __dir__():
        return sorted(set(module.__dict__) | set(exports))

    # `lazy_package` is the last statement of the package's `__init__`: the package is complete
    # although still marked as initialising, so it does not defer its own registration
    register_keras_objects(*keras_modules, importing=package)
    return __getattr__, __dir__


def prepare_import(module_name, *, backend_free=False):
    """Imports TensorFlow quietly before `module_name` when that module will import it.

    Args:
        module_name: the module about to be imported.
        backend_free: the module imports Keras but not TensorFlow (so TensorFlow is imported only
            when Keras' backend is TensorFlow).
    """
    if module_name in sys.modules:
        return
    if not backend_free or keras_backend() == "tensorflow":
        import_tensorflow_quietly()


def register_keras_objects(*modules, importing=None):
    """Imports `modules` (which register Keras objects) now if Keras is imported, else after it is.

    Args:
        *modules: module names, e.g. `"common.layers"`, `"kneeoa.model"`.
        importing: the package whose `__init__` calls this as its last statement: complete, so
            its being marked as initialising does not defer the registration.
    """
    with _LOCK:
        for name in modules:
            if name not in _PENDING and name not in sys.modules:
                _PENDING.append(name)
    if _keras_ready():
        # a registration module that cannot be imported (a missing optional dependency) must not
        # make `import PKG` fail: it stays pending and raises where the package is used
        register_pending(keep_failed=True, importing=importing)
    elif _PENDING:
        _install_hook()


def register_pending(*, keep_failed=False, importing=None):
    """Imports the registration modules still pending, unless one of the suite's is half-imported.

    Args:
        keep_failed: a module that fails to import (ImportError) stays pending instead of raising
            (the hook inside `import keras` must not make the user's own import fail).
        importing: a package that is complete although still initialising (see
            `register_keras_objects`).

    Returns:
        The names still pending (empty once everything is registered).
    """
    with _LOCK:
        if not _PENDING or not _keras_ready() or _half_imported(importing):
            return list(_PENDING)
        names = list(_PENDING)
        _PENDING.clear()
    for index, name in enumerate(names):
        if name in sys.modules:
            continue
        try:
            prepare_import(name, backend_free=True)
            importlib.import_module(name)
        except ImportError:
            if not keep_failed:
                with _LOCK:
                    _PENDING[:0] = [n for n in names[index + 1 :] if n not in _PENDING]
                raise
            with _LOCK:
                _PENDING.append(name)
    return list(_PENDING)


def _keras_ready():
    module = sys.modules.get("keras")
    return module is not None and not _initializing(module)


def _initializing(module):
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _half_imported(importing=None):
    for name, module in list(sys.modules.items()):
        if name == importing:
            continue
        if name.split(".")[0] in _DEFERRING_PACKAGES and _initializing(module):
            return True
    return False


# Registration waits for these to finish importing (keras-hub imports Keras half-way through).
_WATCHED = ("keras", "keras_hub")


class _AfterKerasImport(importlib.abc.MetaPathFinder):
    """Finds `keras` (and `keras_hub`) through the other finders; registers after they execute."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _WATCHED or fullname in sys.modules:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _RegisteringLoader(spec.loader)
        return spec


class _RegisteringLoader(importlib.abc.Loader):
    """Wraps a watched module's loader: executes it, then imports the pending registrations."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        # the module is still marked as initialising here; registration runs once it is not
        module.__spec__._initializing = False
        if not register_pending(keep_failed=True):
            _remove_hook()

    def __getattr__(self, name):  # resource readers and the like: Keras' own loader answers
        return getattr(self._loader, name)


def _install_hook():
    with _LOCK:
        if not any(isinstance(f, _AfterKerasImport) for f in sys.meta_path):
            sys.meta_path.insert(0, _AfterKerasImport())


def _remove_hook():
    with _LOCK:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _AfterKerasImport)]
