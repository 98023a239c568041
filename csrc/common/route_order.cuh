// SPDX-License-Identifier: Apache-2.0
// route_order.cuh: the one ranking rule of every routing op (zaya::topk_gating, zaya::zaya_router),
// as reference.topk_gating states it: higher biased score first, the lower route index on equal
// scores, a NaN score ranked as -inf.
#pragma once

#include <math.h>

#include "compat.h"

namespace zk {

// Order on (score, route) candidates: higher score first, then the lower route. Route -1 = none.
ZK_HOST_DEVICE bool route_better(float score_a, int route_a, float score_b, int route_b) {
  if (route_b < 0) return route_a >= 0;
  if (route_a < 0) return false;
  return score_a > score_b || (score_a == score_b && route_a < route_b);
}

// The biased score of a route; NaN ranks as -inf (the reference's nan_to_num).
ZK_HOST_DEVICE float route_score(float prob, float bias) {
  const float s = prob + bias;
  return isnan(s) ? -INFINITY : s;
}

}  // namespace zk
