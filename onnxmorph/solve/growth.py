"""How many new channels each segment of a widened space gets when grouped ops constrain it: a grouped conv's
groups, a channel shuffle's groups must each grow by the same number, while the segments inside them (cut by a
Concat or a Split) may be of different sizes. A small integer program (scipy's milp)."""
from __future__ import annotations

import numpy as np


def equal_part_growth(sizes: list[int], constraints: list[list[list[int]]], extra: int) -> list[int] | None:
    """Non-negative integer growth per segment, `extra` in all, such that within each constraint every part (a
    list of segment indices) grows by the same total, as close to proportional to the segments' sizes as the
    constraints allow (the largest deviation from it is minimised). None when no such growth exists."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    n = len(sizes)
    rows, low, high = [np.r_[np.ones(n), 0.0]], [extra], [extra]
    for parts in constraints:
        first = np.zeros(n + 1)
        first[parts[0]] = 1.0
        for part in parts[1:]:
            row = -first.copy()
            row[part] += 1.0
            rows.append(row)
            low.append(0.0)
            high.append(0.0)
    total = float(sum(sizes))
    for s, size in enumerate(sizes):   # |x_s - share_s| <= t
        share = extra * size / total
        row = np.zeros(n + 1)
        row[s], row[n] = 1.0, -1.0
        rows.append(row)
        low.append(-np.inf)
        high.append(share)
        row = row.copy()
        row[n] = 1.0
        rows.append(row)
        low.append(share)
        high.append(np.inf)
    objective = np.r_[np.zeros(n), 1.0]
    found = milp(objective, constraints=LinearConstraint(np.array(rows), low, high),
                 integrality=np.r_[np.ones(n), 0.0], bounds=Bounds(np.zeros(n + 1), np.full(n + 1, np.inf)))
    if not found.success:
        return None
    return [int(round(v)) for v in found.x[:n]]


def nearest_feasible(sizes: list[int], constraints: list[list[list[int]]], extra: int, limit: int = 256):
    """(the largest total below `extra`, the smallest above) that equal_part_growth can place; None where there is
    none within `limit`."""
    below = next((e for e in range(extra - 1, max(0, extra - limit), -1)
                  if equal_part_growth(sizes, constraints, e) is not None), None)
    above = next((e for e in range(extra + 1, extra + limit) if equal_part_growth(sizes, constraints, e) is not None),
                 None)
    return below, above
