"""Language-model arithmetic that training and evaluation share: learning-rate schedules, window cross-entropy."""
