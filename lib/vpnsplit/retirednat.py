"""The retired aliases' kind of vpnsplit's nft table (nftkinds.Kind; retire.Retired).

A retired alias is a backstop source confined to no device (backstop.sealed: in the confine
sources, with no path of its own); set retired4/6 (address . the tunnel device it was an alias
of) tells it from a damaged Confine and names its owner. No rule reads that set.
"""

from vpnsplit import backstop
from vpnsplit.backstop import ADDR
from vpnsplit.nftkinds import ElementKind
from vpnsplit.retire import Retired


class RetiredKind(ElementKind):
    type = Retired
    sets = {f"retired{f}": ([ADDR[f], "ifname"], None, None) for f in (4, 6)}

    def elements(self, e):
        return backstop.sealed(e.family, e.address) + [(f"retired{e.family}", {"concat": [e.address, e.device]})]

    def read(self, listing):
        out = set()
        for f in (4, 6):
            for elem in listing.sets.get(f"retired{f}", []):
                e = Retired(f, *elem["concat"])
                if all(value in listing.sets.get(name, []) for name, value in backstop.sealed(f, e.address)):
                    out.add(e)  # only with its confinement: a half-present one counts as absent
        return out


KINDS = (RetiredKind(),)
