"""Containers: ``Sequential`` and ``ModuleList``, named ``"0"``, ``"1"``, ... as in torch."""
import operator
from collections import OrderedDict

from . import _plan
from .module import Module


class _IndexedModules(Module):
    """Children kept in order under the names ``"0"``, ``"1"``, ... (or given names)."""

    def __init__(self, modules=()):
        super().__init__()
        for i, module in enumerate(modules):
            self.add_module(str(i), module)

    def _key(self, idx):
        try:
            idx = operator.index(idx)
        except TypeError:
            raise TypeError(f"{self._get_name()} indices must be integers or slices, got "
                            f"{type(idx).__name__}") from None
        n = len(self._modules)
        if not -n <= idx < n:
            raise IndexError(f"{self._get_name()} index {idx} is out of range for {n} modules")
        return list(self._modules)[idx % n]

    def _renumber(self, modules):
        self._modules.clear()
        for i, module in enumerate(modules):
            self._modules[str(i)] = module
        self._touch()

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def __setitem__(self, idx, module):
        setattr(self, self._key(idx), module)

    def __delitem__(self, idx):
        if isinstance(idx, slice):
            doomed = set(list(self._modules)[idx])
        else:
            doomed = {self._key(idx)}
        self._renumber([m for k, m in self._modules.items() if k not in doomed])

    def append(self, module):
        """Add ``module`` at the end; returns self."""
        self.add_module(str(len(self)), module)
        return self

    def extend(self, modules):
        """Append every module of ``modules``; returns self."""
        for module in modules:
            self.append(module)
        return self

    def insert(self, index, module):
        """Insert ``module`` before position ``index`` (renumbering those after it)."""
        if not isinstance(module, Module):
            raise TypeError(f"{self._get_name()}.insert: expected a Module, got "
                            f"{type(module).__name__}")
        modules = list(self._modules.values())
        modules.insert(index, module)
        self._renumber(modules)


class Sequential(_IndexedModules):
    """Modules applied in order, the output of each being the input of the next.

    Parameters
    ----------
    *modules : Module
        Children named ``"0"``, ``"1"``, ...; or a single ``OrderedDict`` of name -> Module.

    Examples
    --------
    >>> net = fscnn.nn.Sequential(fscnn.nn.Conv2d(3, 8, 3), fscnn.nn.ReLU())
    >>> net[0], len(net), net[-1:]
    (Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1)), 2, Sequential(
      (1): ReLU()
    ))
    """

    def __init__(self, *modules):
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            super().__init__()
            for name, module in modules[0].items():
                self.add_module(name, module)
        else:
            super().__init__(modules)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return Sequential(OrderedDict(list(self._modules.items())[idx]))
        return self._modules[self._key(idx)]

    @property
    def _plain_sequence(self):
        """Whether ``forward`` is Sequential's own (a plan may then run the children itself)."""
        return type(self).forward is Sequential.forward

    def forward(self, x):
        """Apply every child to ``x`` in order."""
        run = _plan.current_run()
        if run is not None and run.plan.contains(self):
            return run.sequence(self, x)
        for module in self:
            x = module(x)
        return x

    def _fusion_chains(self):
        """Every run of adjacent children that can execute as one kernel (when ``forward`` is
        Sequential's own; a subclass with another ``forward`` declares ``_fusions``)."""
        if type(self).forward is not Sequential.forward:
            return super()._fusion_chains()
        children = list(self)
        chains, i = [], 0
        while i < len(children):
            found = _plan.fusable_chain(children[i:i + 4])
            size = 1 if found is None else sum(m is not None for m in found)
            if size > 1:
                chains.append(children[i:i + size])
            i += size
        return chains


class ModuleList(_IndexedModules):
    """A list of modules, registered as children; it has no ``forward`` of its own.

    Parameters
    ----------
    modules : iterable of Module, optional
    """

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            return ModuleList(list(self._modules.values())[idx])
        return self._modules[self._key(idx)]
