"""The review loop: doubtful and randomly sampled predictions go to people (queue), their answers are kept
(decisions), exchanged with Label Studio (label_studio) and measure production accuracy (accuracy)."""
