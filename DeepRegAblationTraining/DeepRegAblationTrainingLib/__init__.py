"""DeepRegAblationTrainingLib: training, evaluation, ablation reports and the command line."""
