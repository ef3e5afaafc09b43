"""A user's callback with a state_key: its state saved in checkpoints and restored."""



class Counter:
    """A user's own stateful callback: its state travels in checkpoints."""

    state_key = "counter"

    def __init__(self):
        self.epochs = 0

    def on_epoch_end(self, epoch, logs):  # Keras' signature
        self.epochs += 1

    def state_dict(self):
        return {"epochs": self.epochs}

    def load_state_dict(self, state):
        self.epochs = state["epochs"]


def test_a_users_stateful_callback_is_restored_on_resume(tmp_path):
    from tests.helpers.small_runs import blobs, small_model

    first = Counter()
    small_model().fit(2, blobs(), callbacks=[first], output_dir=str(tmp_path), progress=False)
    assert first.epochs == 2
    again = Counter()
    small_model().fit(3, blobs(), callbacks=[again], output_dir=str(tmp_path), progress=False)
    assert again.epochs == 3  # 2 restored from the checkpoint, 1 trained now
