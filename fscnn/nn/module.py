"""``Module``: the base class of every layer and model, with torch.nn's naming contract.

A module owns named parameters and buffers (read-only NumPy arrays: float32, and int64 for
BatchNorm's ``num_batches_tracked``) and named child
modules, registered in assignment order. ``state_dict()`` joins the names with dots exactly as
torch does, so a torchvision checkpoint saved as ``.npz`` loads with ``load_state_dict``.
Convolution and linear weights may instead be held sparse (``Module.to_sparse``, or loading a
``SparseConvWeight``/``CSRMatrix``); ``state_dict()`` still gives dense arrays, per key on read.

Calling a module runs its *prepared plan* (see :mod:`fscnn.nn._plan`): a separate, fused
representation with BatchNorm folded into convolutions, ReLU fused into kernel epilogues and
weights converted once to the kernels' sparse form. The module tree itself is never changed
by preparation, so ``state_dict()`` and ``repr`` stay torch-like.
"""
import threading
import time
from collections import OrderedDict, namedtuple
from collections.abc import MutableMapping

import numpy as np

from .. import _config, io, ops
from .._progress import Progress
from ..sparse import CSRMatrix, FormatError, SparseConvWeight
from . import _plan
from .errors import LayerInputError, ModelPickleError, StateDictError

SPARSE_TYPES = (CSRMatrix, SparseConvWeight)

IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
"""What a non-strict :meth:`Module.load_state_dict` could not match, as in torch."""

# What a module's pickle records, checked on unpickling: pickles are for moving a model
# between processes of one installation (e.g. Dask workers), archives (fscnn.save) for keeping it.
_PICKLE_KEY = "_fscnn_pickle"
_PICKLE_FORMAT = 1

# Lazy preparation may be triggered from several threads calling one model at once.
_prepare_lock = threading.RLock()


def _as_array(value, label, expected_shape=None, dtype=np.float32):
    """``value`` as a fresh read-only C-contiguous array of ``dtype`` (float32 but for integer
    buffers such as BatchNorm's ``num_batches_tracked``), or None.

    Raises TypeError for non-numeric values and ValueError when ``expected_shape`` is given
    and differs.
    """
    if value is None:
        return None
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiub":
        raise TypeError(f"{label}: expected a real numeric array, got dtype {arr.dtype}")
    if expected_shape is not None and arr.shape != tuple(expected_shape):
        raise ValueError(f"{label}: expected shape {tuple(expected_shape)}, got {arr.shape}")
    arr = np.array(arr, dtype=dtype, order="C", copy=True)
    arr.setflags(write=False)
    return arr


def _dense_of(value):
    """A read-only dense float32 array of a sparse weight (fresh each call)."""
    arr = value.to_dense()
    arr.setflags(write=False)
    return arr


def _sparse_problem(module, name, value, expected_shape):
    """Why ``value`` (a sparse weight) cannot be ``module``'s ``name``, or None if it can."""
    kind = getattr(module, "_sparse_weights", {}).get(name)
    if kind is None or type(value) is not kind:
        allowed = f"a {kind.__name__}" if kind is not None else "only a dense array"
        return (f"{type(module).__name__}.{name} cannot be held as a {type(value).__name__} "
                f"(it takes {allowed})")
    if expected_shape is not None and tuple(value.shape) != tuple(expected_shape):
        return None  # reported as a shape mismatch by the caller
    try:
        value.check_format(full=True)
    except FormatError as exc:
        return f"invalid {type(value).__name__}: {exc}"
    return None


class StateDict(MutableMapping):
    """The state_dict of a model holding some weights sparse (see :meth:`Module.to_sparse`).

    A mutable, ordered mapping name -> ndarray that reads like the ``OrderedDict`` a dense
    model returns (same keys, same order, dense float32 arrays that torch can load), but
    materialises each sparse-held weight as a fresh read-only dense array *when that key is
    read*, so iterating over it holds at most one densified weight at a time (unless the
    caller keeps them). :meth:`stored` gives the value as held (sparse or dense) without
    densifying; :meth:`Module.load_state_dict` uses it, so loading one sparse model's
    state_dict into another keeps the weights sparse.
    """

    def __init__(self, items=()):
        self._items = OrderedDict(items)

    def __getitem__(self, key):
        value = self._items[key]
        return _dense_of(value) if isinstance(value, SPARSE_TYPES) else value

    def stored(self, key):
        """The value of ``key`` as held: a sparse weight object or an ndarray."""
        return self._items[key]

    def __setitem__(self, key, value):
        self._items[key] = value

    def __delitem__(self, key):
        del self._items[key]

    def __iter__(self):
        return iter(self._items)

    def __len__(self):
        return len(self._items)

    def copy(self):
        return StateDict(self._items)

    def __repr__(self):
        return f"StateDict({list(self._items)!r})"


def _check_name(name, owner):
    if not isinstance(name, str) or not name or "." in name:
        raise KeyError(f"{owner}: a name must be a non-empty string without '.', got {name!r}")


def _addindent(text, spaces):
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    return lines[0] + "\n" + "\n".join(" " * spaces + line for line in lines[1:])


class Module:
    """Base class of layers and models; subclass it and override :meth:`forward`.

    Assigning a ``Module`` to an attribute registers it as a child; assigning an array to a
    registered parameter or buffer replaces it (converted to a read-only float32 copy of the
    same shape) and invalidates the prepared plan. Parameters are read-only on purpose:
    change weights by assignment or :meth:`load_state_dict`, never in place, so that the
    prepared kernels never run on stale weights.

    A subclass whose ``forward`` applies a convolution, its batch norm and a ReLU in a row may
    list those attribute names in the class attribute ``_fusions`` (a tuple of name tuples,
    e.g. ``(("conv1", "bn1", "relu"),)``); preparation then runs them as one fused kernel. The
    ``forward`` must pass the convolution's output straight to the batch norm and that to the
    activation, as the zoo's ResNet blocks do; a call that breaks the chain raises.

    A chain whose output ``forward`` passes straight to :func:`fscnn.functional.add` as one
    operand (a residual connection: the other is the shortcut) may also be listed in
    ``_residuals`` (the same form; dotted names reach into children, e.g. ``("conv.2",
    "conv.3")``). Its prepared convolution then returns a
    :class:`~fscnn.ops.PendingOutput`, and the add runs in the kernel's epilogue while the
    output is in registers, with the add's activation. Anything else that reads the pending
    output gets the plain convolution, so a wrong declaration costs speed, not correctness.

    Examples
    --------
    >>> class Block(fscnn.nn.Module):
    ...     _fusions = (("conv", "bn", "relu"),)
    ...     def __init__(self, c):
    ...         super().__init__()
    ...         self.conv = fscnn.nn.Conv2d(c, c, 3, padding=1, bias=False)
    ...         self.bn = fscnn.nn.BatchNorm2d(c)
    ...         self.relu = fscnn.nn.ReLU()
    ...     def forward(self, x):
    ...         return x + self.relu(self.bn(self.conv(x)))
    >>> Block(8)(np.zeros((1, 8, 5, 5))).shape
    (1, 8, 5, 5)
    """

    _fusions = ()
    _residuals = ()

    _unbatched_ndim = None
    """Rank of an unbatched input the module also takes (3 for (C, H, W) images), or None.
    Such an input runs as a batch of one and the output loses the batch dimension again."""

    def __init__(self):
        d = self.__dict__
        d["training"] = True
        d["_parameters"] = OrderedDict()
        d["_buffers"] = OrderedDict()
        d["_modules"] = OrderedDict()
        d["_version"] = 0
        d["_prepared"] = None
        d["_kernel"] = "auto"
        # kernel choices a pickle or archive carried (see Plan.choices), and the versions of
        # the tree's modules then: a tree changed since is timed again
        d["_choices"] = None

    # ------------------------------------------------------------------ attributes
    def _touch(self):
        self.__dict__["_version"] += 1
        _plan.bump_epoch()

    def __setattr__(self, name, value):
        d = self.__dict__
        if "_modules" not in d:
            raise AttributeError(f"cannot assign {name!r} before Module.__init__() call")
        params, buffers, modules = d["_parameters"], d["_buffers"], d["_modules"]
        if isinstance(value, Module):
            params.pop(name, None)
            buffers.pop(name, None)
            d.pop(name, None)
            modules[name] = value
        elif name in params or name in buffers:
            registry = params if name in params else buffers
            old = registry[name]
            label = f"{self._get_name()}.{name}"
            if isinstance(value, SPARSE_TYPES):
                problem = _sparse_problem(self, name, value, None)
                if problem is not None:
                    raise TypeError(f"{label}: {problem}")
                if old is not None and tuple(value.shape) != tuple(old.shape):
                    raise ValueError(f"{label}: expected shape {tuple(old.shape)}, got "
                                     f"{tuple(value.shape)}")
                registry[name] = value  # immutable: its arrays are read-only
            else:  # an integer buffer stays integer, everything else becomes float32
                dtype = (old.dtype if isinstance(old, np.ndarray) and old.dtype.kind in "iu"
                         else np.float32)
                registry[name] = _as_array(value, label, None if old is None else old.shape,
                                           dtype)
        elif name in modules:
            if value is not None:
                raise TypeError(f"cannot assign a {type(value).__name__} as child module "
                                f"{name!r} of {self._get_name()} (a Module or None expected)")
            modules[name] = None
        else:
            object.__setattr__(self, name, value)
            if name.startswith("_") or name == "training":
                return
        self._touch()

    def __getattr__(self, name):
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if name in d[registry]:
                del d[registry][name]
                break
        else:
            object.__delattr__(self, name)
        self._touch()

    def __getstate__(self):
        # A pickle carries the architecture, the convolution and linear weights in the
        # encoding fscnn.save would write (held as before on arrival: dense or compressed
        # rows) and the prepared plan's kernel choices, not the converted kernel data: the
        # receiver rebuilds those lazily, without timing kernels again when its thread count
        # and SIMD level are those the choices were made for.
        from .. import __version__
        state = dict(self.__dict__)
        state["_prepared"] = None
        state["_choices"] = self._kernel_choices()  # versions differ in the receiving process
        params, packed = OrderedDict(state["_parameters"]), {}
        for name in getattr(self, "_sparse_weights", {}):
            fields = None if params.get(name) is None else io.encode_tensor(params[name])
            if fields is not None:
                packed[name] = (isinstance(params[name], SPARSE_TYPES), fields)
                params[name] = None
        state["_parameters"], state["_packed"] = params, packed
        state[_PICKLE_KEY] = (_PICKLE_FORMAT, __version__)
        return state

    def _kernel_choices(self):
        """The kernel choices of the current plan (:meth:`Plan.choices`), else those a pickle
        or archive carried and no plan has used yet, else None."""
        plan = self.__dict__["_prepared"]
        if plan is not None and plan.is_current():
            return plan.choices() or None
        choices = self.__dict__["_choices"]
        return choices[0] if choices and choices[1] == self._tree_versions() else None

    def _tree_versions(self):
        return tuple(m._version for _, m in self.named_modules())

    def _carry_choices(self, choices):
        """Have the next lazily built plan take ``choices`` (:meth:`Plan.choices` of this
        model in another process, or read from an archive) instead of timing kernels."""
        with _prepare_lock:
            self.__dict__["_prepared"] = None
            self.__dict__["_choices"] = (choices, self._tree_versions()) if choices else None

    def __setstate__(self, state):
        from .. import __version__
        found = state.pop(_PICKLE_KEY, None)
        if found != (_PICKLE_FORMAT, __version__):
            made = (f"fscnn {found[1]}" if isinstance(found, tuple) and len(found) == 2
                    else "another fscnn version")
            raise ModelPickleError(f"cannot unpickle this {type(self).__name__}: it was pickled "
                                   f"by {made}, this is fscnn {__version__}; save models with "
                                   f"fscnn.save to move them between versions")
        params = state["_parameters"]
        for name, (sparse, fields) in state.pop("_packed").items():
            params[name] = io.decode_tensor(fields, rows=sparse)
            if not sparse:
                params[name].setflags(write=False)
        choices = state.pop("_choices", None)
        self.__dict__.update(state, _choices=None)
        self._carry_choices(choices)

    def __dir__(self):
        d = self.__dict__
        return sorted(set(super().__dir__()) | set(d["_parameters"]) | set(d["_buffers"])
                      | set(d["_modules"]))

    def register_parameter(self, name, value):
        """Add a parameter (array of any shape, or None for an absent optional one)."""
        self._register(name, value, "_parameters")

    def register_buffer(self, name, value):
        """Add a buffer: state that is saved but not learned (running statistics)."""
        self._register(name, value, "_buffers")

    def _register(self, name, value, registry):
        _check_name(name, f"{self._get_name()}.register{registry[:-1]}")
        if name in self.__dict__ or name in self._modules:
            raise KeyError(f"{self._get_name()}: attribute {name!r} already exists")
        self.__dict__[registry][name] = _as_array(value, f"{self._get_name()}.{name}")
        self._touch()

    def _init_array(self, name, value, registry="_parameters"):
        """Register a freshly made float32 array (or None) without copying it."""
        if value is not None:
            value.setflags(write=False)
        self.__dict__[registry][name] = value

    def add_module(self, name, module):
        """Register ``module`` (or None) as the child called ``name``."""
        _check_name(name, f"{self._get_name()}.add_module")
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{self._get_name()}.add_module: {name!r} must be a Module or None, "
                            f"got {type(module).__name__}")
        self._modules[name] = module
        self._touch()

    # ------------------------------------------------------------------ traversal
    def named_children(self):
        """Iterate over ``(name, child)`` pairs of the direct children, in order."""
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self):
        """Iterate over the direct children, in order."""
        for _, module in self.named_children():
            yield module

    def named_modules(self, memo=None, prefix=""):
        """Iterate over ``(qualified name, module)`` for this module and all descendants.

        Each module is listed once, under its first name; the root's name is ``""``.
        """
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, module in self.named_children():
            yield from module.named_modules(memo, f"{prefix}.{name}" if prefix else name)

    def modules(self):
        """Iterate over this module and all descendants."""
        for _, module in self.named_modules():
            yield module

    def _named_arrays(self, registry):
        for prefix, module in self.named_modules():
            for name, value in module.__dict__[registry].items():
                if value is not None:
                    yield (f"{prefix}.{name}" if prefix else name), value

    def named_parameters(self):
        """Iterate over ``(qualified name, array)`` of every parameter."""
        return self._named_arrays("_parameters")

    def parameters(self):
        """Iterate over every parameter array."""
        return (value for _, value in self.named_parameters())

    def named_buffers(self):
        """Iterate over ``(qualified name, array)`` of every buffer."""
        return self._named_arrays("_buffers")

    def buffers(self):
        """Iterate over every buffer array."""
        return (value for _, value in self.named_buffers())

    # ------------------------------------------------------------------ state dict
    def _state_slots(self, prefix=""):
        """``{key: (module, attribute name, array)}`` in torch's state_dict order."""
        slots = OrderedDict()
        d = self.__dict__
        for registry in ("_parameters", "_buffers"):
            for name, value in d[registry].items():
                if value is not None:
                    slots[prefix + name] = (self, name, value)
        for name, module in self.named_children():
            slots.update(module._state_slots(f"{prefix}{name}."))
        return slots

    def _optional_state_keys(self, prefix=""):
        """Keys that :meth:`load_state_dict` does not require (none by default)."""
        keys = set()
        for name, module in self.named_children():
            keys |= module._optional_state_keys(f"{prefix}{name}.")
        return keys

    def state_dict(self):
        """All parameters and buffers by dot-joined name, as torch names them.

        Returns
        -------
        OrderedDict of str -> ndarray, or StateDict
            The module's own read-only float32 arrays (not copies), and BatchNorm's
            ``num_batches_tracked`` as torch has it: a 0-d int64 buffer (0 unless loaded; it
            only counts training steps), so the result loads into the torch model with
            ``strict=True``. When some
            weights are held sparse (:meth:`to_sparse`), a :class:`StateDict` with the same
            keys whose sparse-held weights are materialised as dense arrays per tensor, when
            read (so saving or converting it to torch never holds every dense weight at once).
        """
        slots = self._state_slots()
        items = ((key, slot[2]) for key, slot in slots.items())
        if any(isinstance(slot[2], SPARSE_TYPES) for slot in slots.values()):
            return StateDict(items)
        return OrderedDict(items)

    def load_state_dict(self, state_dict, strict=True):
        """Copy parameters and buffers from a mapping of name -> array.

        Parameters
        ----------
        state_dict : mapping of str -> array_like, CSRMatrix or SparseConvWeight
            E.g. a dict, the ``NpzFile`` of ``np.load("model.npz")``, a torch state dict or
            what ``fscnn.load(path, sparse=True)`` returns. The members of an fscnn archive
            (``np.load`` of a file written by ``fscnn.save`` or ``fscnn prune``, recognised by
            its ``__fscnn_format__`` key) are decoded first, as ``fscnn.load`` does. Arrays
            are copied as float32 (``num_batches_tracked`` as int64); a batch norm's
            ``num_batches_tracked`` may be missing, as in checkpoints older than torch 0.4.1
            (torch accepts that too). A Conv2d weight may be a :class:`~fscnn.sparse.SparseConvWeight` and a Linear
            weight a :class:`~fscnn.sparse.CSRMatrix` of the same shape: the layer then holds
            it sparse (not copied; its arrays are made read-only), as after :meth:`to_sparse`.
            A dense array loaded into a sparse-held weight makes it dense-held again.
        strict : bool
            Require the keys to match exactly.

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``; both empty when ``strict``.

        Raises
        ------
        StateDictError
            Naming every missing and unexpected key (when ``strict``), every array of the
            wrong shape and every non-numeric value (or sparse weight in the wrong place or
            of an invalid format), all in one error (summarised: counts, the first few
            keys, a hint). Nothing is loaded then.
        fscnn.io.ArchiveError
            ``state_dict`` holds an fscnn archive's members that do not form a valid archive.
        """
        if io.is_encoded(state_dict):  # e.g. np.load() of what fscnn.save or `fscnn prune` wrote
            state_dict = io.decode(state_dict)
        slots = self._state_slots()
        stored = getattr(state_dict, "stored", None)  # a StateDict: keep its sparse values
        provided = list(state_dict.keys())
        provided_set = set(provided)
        optional = self._optional_state_keys()
        missing = [key for key in slots if key not in provided_set and key not in optional]
        unexpected = [key for key in provided if key not in slots and key not in optional]
        mismatched, invalid, arrays = [], [], {}
        for key, (module, name, current) in slots.items():
            if key not in provided_set:
                continue
            value = stored(key) if stored is not None else state_dict[key]
            if isinstance(value, SPARSE_TYPES):
                problem = _sparse_problem(module, name, value, current.shape)
                if problem is not None:
                    invalid.append((key, problem))
                elif tuple(value.shape) != tuple(current.shape):
                    mismatched.append((key, current.shape, tuple(value.shape)))
                else:
                    arrays[key] = value
                continue
            value = np.asarray(value)
            if value.dtype.kind not in "fiub":
                invalid.append((key, f"expected a real numeric array, got dtype {value.dtype}"))
            elif value.shape != current.shape:
                mismatched.append((key, current.shape, value.shape))
            else:
                arrays[key] = value
        if mismatched or invalid or (strict and (missing or unexpected)):
            raise StateDictError(self._get_name(), missing if strict else (),
                                 unexpected if strict else (), mismatched, invalid,
                                 matched=sum(key in slots for key in provided))
        for key, value in arrays.items():
            module, name, _ = slots[key]
            setattr(module, name, value)
        return IncompatibleKeys(missing, unexpected)

    # ------------------------------------------------------------------ sparse storage
    def to_sparse(self, min_sparsity=0.5):
        """Hold Conv2d and Linear weights in compressed rows and drop their dense arrays.

        Each convolution weight with at least ``min_sparsity`` zeros becomes a
        :class:`~fscnn.sparse.SparseConvWeight`, each such linear weight a
        :class:`~fscnn.sparse.CSRMatrix` (6 bytes per non-zero with uint16 column indices,
        8 with int32, instead of 4 bytes per weight). The layer's ``weight`` attribute is then
        that object; running, :meth:`prepare`, :meth:`plan`, batch-norm folding and ReLU
        fusion work as before and give the same results. Prepared operators keep a dense copy
        only for layers whose plan picks the dense kernel. :meth:`state_dict` still returns
        dense arrays, materialised one tensor at a time (see :class:`StateDict`).

        Converting one layer at a time, the extra memory is that layer's compressed form.
        Any prepared plan is dropped (the next call or :meth:`prepare` builds a new one).

        Parameters
        ----------
        min_sparsity : float in [0, 1], default 0.5
            Weights with a smaller fraction of zeros stay dense (compressed rows are larger
            than the dense array below about 1/3 zeros).

        Returns
        -------
        self

        Examples
        --------
        >>> fscnn.prune(model, 0.9, inplace=True)
        >>> model.to_sparse().prepare((1, 3, 224, 224))
        """
        if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) \
                or not 0.0 <= min_sparsity <= 1.0:
            raise ValueError(f"{self._get_name()}.to_sparse: min_sparsity must be a number in "
                             f"[0, 1], got {min_sparsity!r}")
        with _prepare_lock:
            modules = [m for _, m in self.named_modules()]
            for module in modules:  # old plans may hold the dense arrays
                module.__dict__["_prepared"] = None
            for module in modules:
                for name, kind in getattr(module, "_sparse_weights", {}).items():
                    weight = module._parameters.get(name)
                    if weight is None or isinstance(weight, SPARSE_TYPES):
                        continue
                    zeros = weight.size - np.count_nonzero(weight)
                    if weight.size == 0 or zeros < min_sparsity * weight.size:
                        continue
                    module._parameters[name] = kind.from_dense(weight)
                    del weight
                    module._touch()
        return self

    def to_dense(self):
        """Hold every sparse-held weight (see :meth:`to_sparse`) as a dense array again.

        Returns
        -------
        self
        """
        with _prepare_lock:
            for _, module in self.named_modules():
                for name, weight in list(module._parameters.items()):
                    if isinstance(weight, SPARSE_TYPES):
                        module._parameters[name] = _dense_of(weight)
                        module._touch()
        return self

    # ------------------------------------------------------------------ modes
    def train(self, mode=True):
        """Set the ``training`` flag on every module; returns self.

        Accepted for torch compatibility only: fscnn is inference-only, so batch norm always
        uses its running statistics and dropout is always the identity.
        """
        for module in self.modules():
            module.__dict__["training"] = bool(mode)
        return self

    def eval(self):
        """Same as ``train(False)``; returns self."""
        return self.train(False)

    # ------------------------------------------------------------------ running
    def _fusion_chains(self):
        """Runs of children that ``forward`` applies one after another (from ``_fusions``)."""
        chains = []
        for names in self._fusions:
            chain = []
            for name in names:
                module = self._modules.get(name)
                if module is None:
                    break
                chain.append(module)
            chains.append(chain)
        return chains

    def _residual_chains(self):
        """The chains of ``_residuals``, as lists of modules (chains naming a missing module
        are left out)."""
        chains = []
        for names in self._residuals:
            chain = []
            for name in names:
                module = self
                for part in name.split("."):
                    module = module._modules.get(part) if module is not None else None
                if module is None:
                    break
                chain.append(module)
            else:
                chains.append(chain)
        return chains

    def forward(self, *args, **kwargs):
        """The computation, written by subclasses in terms of child modules and
        :mod:`fscnn.functional`."""
        raise NotImplementedError(f"Module [{self._get_name()}] is missing the required "
                                  f"'forward' function")

    def __call__(self, *args, **kwargs):
        """Run the module on NumPy arrays through its prepared plan (preparing it if needed).

        Leaf layers take one float array (converted to C-contiguous float32) and return a
        float32 array; they raise :class:`~fscnn.nn.LayerInputError` (a ``ValueError``)
        naming the layer when its rank, channel count or spatial size does not fit. Image
        layers (Conv2d, BatchNorm2d, the pools) and the zoo's models also take one unbatched
        image (C, H, W), as torch's layers do, and return their output without the batch
        dimension.
        """
        run = _plan.current_run()
        if run is not None and run.plan.contains(self):
            return run.call(self, args, kwargs)
        threads = _config.get_num_threads()
        use = _config.contention.threads_for_call(threads)
        if use == 1 < threads:  # the process is starved of cores: see _config.ContentionGuard
            with _config.thread_limit(1):
                return self._root_call(args, kwargs)
        wall, cpu = time.perf_counter(), time.thread_time()
        out = self._root_call(args, kwargs)
        _config.contention.record(threads, time.perf_counter() - wall,
                                  time.thread_time() - cpu)
        return out

    def _root_call(self, args, kwargs):
        with _plan.running(self._current_plan()) as run:
            out = run.call(self, args, kwargs)
        # a convolution left pending for a residual add that forward did not make
        return out.result() if out.__class__ is ops.PendingOutput else out

    def _current_plan(self):
        with _prepare_lock:
            plan = self._prepared
            if plan is None or not plan.is_current():
                # choices carried by a pickle or an archive apply to the first plan only: a
                # changed tree is timed again
                plan = _plan.Plan(self, self._kernel, strict=False,
                                  choices=self._kernel_choices())
                self.__dict__["_choices"] = None
                self._prepared = plan
            return plan

    def prepare(self, input_shape=None, kernel="auto", progress=None):
        """Fold, fuse and convert the weights once, ahead of the first call.

        Batch norms that follow a convolution are folded into it, a ReLU or ReLU6 after a
        convolution or linear layer runs in its kernel's epilogue, and every convolution and
        linear layer gets an operator holding its converted weights. Calling a module
        prepares it lazily; changing weights (assignment, :meth:`load_state_dict`) makes the
        next call prepare again.

        Parameters
        ----------
        input_shape : tuple of int, optional
            E.g. ``(1, 3, 224, 224)``. When given, the model runs once on zeros of this shape
            so that each layer chooses its kernel for its actual input (see :meth:`plan`), then
            a second time, so that the layers whose choice was a close call (a runner-up near
            the winner, or fewer threads) time it again (``fscnn.ops.second_looks``).
        kernel : {'auto', 'sparse', 'dense', 'winograd', 'depthwise'} or dict of str -> str
            Kernel for every convolution and linear layer, or a mapping from qualified layer
            names (``"features.0"``) to a kernel, the others using ``'auto'``. Kept for later
            (lazy) preparations. ``'winograd'`` for the whole model applies to the 3x3,
            stride-1, dilation-1, ungrouped convolutions, ``'depthwise'`` to the convolutions
            with one input channel per group, and both leave ``'auto'`` to the other layers;
            in a mapping they must name such a layer.
        progress : bool or None
            With ``input_shape``, count the layers prepared on stderr (tqdm's bar when
            installed, else a counter) once preparing has taken more than a second (timing
            kernel candidates takes a while on large models). None: only when stderr is a
            terminal; True: also when it is not; False: never.

        Returns
        -------
        self
        """
        if progress not in (None, True, False):
            raise TypeError(f"{self._get_name()}.prepare: progress must be None, True or False, "
                            f"got {progress!r}")
        if input_shape is not None:
            input_shape = tuple(input_shape)
            if not input_shape or not all(isinstance(s, (int, np.integer)) and s > 0
                                          for s in input_shape):
                raise ValueError(f"{self._get_name()}.prepare: input_shape must be a tuple of "
                                 f"positive ints, got {input_shape!r}")
        with _prepare_lock:
            plan = _plan.Plan(self, kernel)
            self.__dict__["_choices"] = None  # an explicit prepare times the kernels again
            self.__dict__["_kernel"] = kernel
            self.__dict__["_prepared"] = plan
        if input_shape is not None:
            with Progress(len(plan.steps), "prepare", "layer", enabled=progress) as bar, \
                    _plan.reporting(bar):
                self(np.zeros(input_shape, dtype=np.float32))
            # a second call: the layers whose kernel or thread count was a close call time
            # it again, seconds later (ops._WeightedOp._second_look); only here, so that a
            # model prepared lazily keeps its first call's choices (and bits)
            with ops.second_looks():
                self(np.zeros(input_shape, dtype=np.float32))
        return self

    def plan(self):
        """Per fused layer: what it fuses, its weight density and the kernel it runs.

        Kernels are known per input shape once the model has run on it (or was prepared
        with ``input_shape``); before that a layer set to ``'auto'`` shows no choice.

        Returns
        -------
        PlanReport
            A list of :class:`~fscnn.nn.LayerPlan` rows that prints as a table.
        """
        return self._current_plan().report()

    # ------------------------------------------------------------------ repr
    def _get_name(self):
        return type(self).__name__

    def extra_repr(self):
        """One-line description of the hyper-parameters, shown by ``repr``."""
        return ""

    def __repr__(self):
        extra = self.extra_repr()
        extra_lines = extra.split("\n") if extra else []
        child_lines = [f"({name}): {_addindent(repr(module), 2)}"
                       for name, module in self._modules.items()]
        lines = extra_lines + child_lines
        body = ""
        if len(extra_lines) == 1 and not child_lines:
            body = extra_lines[0]
        elif lines:
            body = "\n  " + "\n  ".join(lines) + "\n"
        return f"{self._get_name()}({body})"


class Layer(Module):
    """Base of the built-in leaf layers: one float array in, one float32 array out.

    Subclasses implement ``forward(x)`` on a float32 C-contiguous array and may override
    :meth:`_check_input` to validate its shape with a message naming the layer.
    """

    _fused_activation = None
    """Name of this layer as an epilogue ('relu', 'relu6') of a preceding kernel, or None."""

    def _check_input(self, x, label):
        """Raise :class:`LayerInputError` (starting with ``label``) if ``x`` does not fit."""

    def _can_fold(self, module):
        """Whether ``module`` (the next layer) can be folded into this layer's weights."""
        return False

    def _require_ndim(self, x, ndim, label, layout="(N, C, H, W)"):
        if x.ndim != ndim:
            also = " or an unbatched (C, H, W)" if self._unbatched_ndim == 3 else ""
            raise LayerInputError(f"{label}: expected a {ndim}-D input {layout}{also}, got "
                                  f"shape {x.shape}")

    @staticmethod
    def _require_channels(x, channels, label, what="input channels"):
        if x.shape[1] != channels:
            raise LayerInputError(f"{label}: expected {channels} {what}, got {x.shape[1]} "
                                  f"(input shape {x.shape})")


def probe_output(model, image_shape):
    """What ``model`` returns for a batch of images of ``image_shape`` (C, H, W), computed on
    an empty batch (no kernel runs), or on one zero image when the model's own code cannot
    take an empty batch (e.g. ``x.reshape(len(x), -1)``): its shape and dtype say what a
    batch gives, and an input that does not fit raises here, before any real work.

    Returns
    -------
    The model's output for the probe (an array of first dimension 0 or 1, or a tuple).
    """
    try:
        return model(np.zeros((0,) + tuple(image_shape), np.float32))
    except ValueError:
        return model(np.zeros((1,) + tuple(image_shape), np.float32))
