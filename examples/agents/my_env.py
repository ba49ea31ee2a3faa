"""Example TRL environment for a run config: `environment: "examples/agents/my_env.py:ShopEnv"`.

TRL makes one instance per rollout, calls `reset(**row)` with the dataset row before it (a returned string is
appended to the prompt), and exposes every public method as a tool. `_privileged_context()` is rlsd's hook: the
teacher sees what it returns (a string fills the `solution` field, a dict any fields); the agent never does.
Its leading underscore keeps TRL from offering it to the agent as a tool.
"""

from rlsd.tasks.shop import PRICES


class ShopEnv:
    def reset(self, **row):
        self.row = row
        self.lookups = 0
        return None  # or an observation string, appended to the last user message

    def price(self, item: str) -> str:
        """The unit price of an item in the shop.

        Args:
            item: the item's name, e.g. pen
        """
        self.lookups += 1
        return str(PRICES[item.strip().lower()])

    def _privileged_context(self):
        return self.row.get("solution", "")
