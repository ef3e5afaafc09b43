"""The supervisor's reading of a launcher's output and of the processes' reports."""



def test_the_supervisor_holds_back_the_launchers_traceback_and_reads_its_report():
    from train.supervision.supervisor import LauncherFilter, what_happened

    shown, filt = [], LauncherFilter()
    lines = ["epoch 1 ...\n",
             "[rank 0] error: lost contact with another process (Connection reset by peer) at epoch 2 batch 5\n",
             "E1127 02:21:13.861000 5120 torch/distributed/elastic/multiprocessing/api.py:882] failed (exitcode: -9) "
             "local_rank: 1 (pid: 5127) of binary: /venv/bin/python\n",
             "Traceback (most recent call last):\n", '  File "/venv/bin/accelerate", line 8, in <module>\n',
             "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:\n", "=====\n"]
    for line in lines:
        shown += filt._line(1, line)
    assert shown == lines[:2] and filt.exit_codes == {5127: -9}
    user_traceback = ["Traceback (most recent call last):\n", '  File "/work/my_script.py", line 3\n']
    assert LauncherFilter()._line(1, user_traceback[0]) == []
    records = [{"rank": 0, "pid": 5126, "code": 1, "reason": "lost contact", "epoch": 2, "batch": 5},
               {"rank": 1, "pid": 5127, "code": None}]
    assert what_happened(records, filt.exit_codes, []) == "rank 1 exited (SIGKILL) at epoch 2 batch 5"
    assert what_happened(records, {}, [1]) == "rank 1 stalled (rank 0: lost contact) at epoch 2 batch 5"
    records[1].update(code=1, reason="RuntimeError: a bug in rank 1's model")  # the cause, not its echo
    assert what_happened(records, {}, []) == "rank 1 failed (RuntimeError: a bug in rank 1's model) at epoch 2 batch 5"
