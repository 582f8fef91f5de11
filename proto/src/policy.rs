//! Policies: validation and the decision function (being written).
