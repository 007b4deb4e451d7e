"""Activity: learner events on exercises from xAPI, ProgSnap2 and the page SDK, in one model."""
