import numpy as np
import pytest

from swgl.bench import metrics

# R[i, j]: accuracy on task j after training task i (3 tasks), computed by hand below.
R = np.array([
    [0.9, 0.1, 0.2],
    [0.6, 0.8, 0.3],
    [0.5, 0.7, 0.95],
])
B = np.array([0.1, 0.1, 0.1])


def test_acc_is_mean_of_last_row():
    assert metrics.acc(R) == pytest.approx((0.5 + 0.7 + 0.95) / 3)


def test_bwt_compares_final_to_just_learned():
    # (0.5 - 0.9) + (0.7 - 0.8) over the 2 earlier tasks
    assert metrics.bwt(R) == pytest.approx((-0.4 - 0.1) / 2)


def test_fwt_uses_accuracy_before_training_on_the_task():
    # R[0,1] - b1 = 0.0, R[1,2] - b2 = 0.2
    assert metrics.fwt(R, B) == pytest.approx(0.1)


def test_forgetting_uses_the_best_earlier_accuracy():
    R2 = np.array([[0.6, 0.0, 0.0], [0.9, 0.8, 0.0], [0.5, 0.7, 0.9]])
    # task 0: max(0.6, 0.9) - 0.5 = 0.4; task 1: max(0.8) - 0.7 = 0.1
    assert metrics.forgetting(R2) == pytest.approx(0.25)
    assert metrics.bwt(R2) == pytest.approx(((0.5 - 0.6) + (0.7 - 0.8)) / 2)


def test_learning_accuracy_is_the_diagonal():
    assert metrics.learning_accuracy(R) == pytest.approx((0.9 + 0.8 + 0.95) / 3)


def test_single_task_has_no_transfer():
    one = np.array([[0.7]])
    assert metrics.matrix_metrics(one, [0.1]) == {
        "acc": 0.7, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0, "learning_acc": 0.7}


def test_forgetting_is_negative_when_accuracy_grows():
    up = np.array([[0.5, 0.0], [0.9, 0.8]])
    assert metrics.forgetting(up) == pytest.approx(-0.4)
    assert metrics.bwt(up) == pytest.approx(0.4)


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros(3), np.zeros((0, 0))])
def test_non_square_matrix_is_rejected(bad):
    with pytest.raises(ValueError, match="square"):
        metrics.acc(bad)


def test_fwt_checks_baseline_shape():
    with pytest.raises(ValueError, match="b must have shape"):
        metrics.fwt(R, [0.1, 0.1])


def test_online_accuracy_and_plasticity():
    assert metrics.average_online_accuracy([1, 0, 1, 1]) == 0.75
    # 1 - 1/2 = 0.5; 1 - 3/1 < 0 -> 0; 1 - 0/4 = 1
    assert metrics.plasticity([2.0, 1.0, 4.0], [1.0, 3.0, 0.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one shape"):
        metrics.plasticity([1.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="empty"):
        metrics.average_online_accuracy([])
